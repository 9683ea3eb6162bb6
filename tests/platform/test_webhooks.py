"""Standard Webhooks signatures and retries, against a receiver on 127.0.0.1."""

import json

from webhook_receiver import Receiver

from tunery.platform.webhooks import WebhookSender, sign, verify

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_the_signature_is_the_standard_webhooks_one():
    # The example from the Standard Webhooks specification's reference implementation.
    body = b'{"test": 2432232314}'
    assert sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_failed_delivery_is_retried_and_every_try_is_signed():
    receiver = Receiver(fail_first=1)
    try:
        sender = WebhookSender(receiver.url, SECRET, delays_s=(0.05, 0.05))
        sender.send("fine_tuning.job.succeeded", {"id": "ftjob-1"}).join(30)
        assert receiver.arrived.is_set() and len(receiver.deliveries) == 2
        first, second = receiver.deliveries
        assert first[0]["webhook-id"] == second[0]["webhook-id"]  # the same message, tried again
        for headers, body in receiver.deliveries:
            assert verify(SECRET, headers, body)
            assert not verify("whsec_" + "A" * 32, headers, body)
        assert json.loads(second[1])["type"] == "fine_tuning.job.succeeded"
    finally:
        receiver.close()

"""Signed webhooks for job outcomes, as Standard Webhooks specifies: `webhook-id`,
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.

Deliveries run on a background thread and are retried with exponential back-off; a receiver that
stays down loses the event after the last try (logged), and never slows a worker.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time

log = logging.getLogger("tunery.webhooks")
RETRY_DELAYS_S = (0.5, 2.0, 8.0, 30.0, 120.0)


def decode_secret(secret: str) -> bytes:
    """`whsec_<base64>` as Standard Webhooks writes secrets; any other string is used as its bytes."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode("utf-8")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(decode_secret(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: dict, body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check (used by tests and documented for users)."""
    timestamp = int(headers["webhook-timestamp"])
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, headers["webhook-id"], timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in headers["webhook-signature"].split())


class WebhookSender:
    def __init__(self, url: str, secret: str, *, delays_s: tuple[float, ...] = RETRY_DELAYS_S, timeout_s: float = 10.0):
        self.url, self.secret, self.delays_s, self.timeout_s = url, secret, delays_s, timeout_s
        self.threads: list[threading.Thread] = []

    def send(self, event_type: str, data: dict) -> threading.Thread:
        body = json.dumps({"type": event_type, "timestamp": int(time.time()), "data": data}).encode()
        thread = threading.Thread(target=self._deliver, args=(f"msg_{secrets.token_hex(12)}", body), daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def _deliver(self, message_id: str, body: bytes) -> bool:
        import httpx

        for attempt, delay in enumerate((0.0, *self.delays_s)):
            time.sleep(delay)
            timestamp = int(time.time())
            headers = {"content-type": "application/json", "webhook-id": message_id,
                       "webhook-timestamp": str(timestamp), "webhook-signature": sign(self.secret, message_id,
                                                                                      timestamp, body)}
            try:
                response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout_s)
                if response.status_code < 300:
                    return True
                log.warning("webhook %s answered %d (attempt %d)", message_id, response.status_code, attempt + 1)
            except httpx.HTTPError as exc:
                log.warning("webhook %s failed: %s (attempt %d)", message_id, type(exc).__name__, attempt + 1)
        log.error("webhook %s dropped after %d attempts", message_id, len(self.delays_s) + 1)
        return False

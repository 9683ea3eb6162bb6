"""`GET /metrics`: Prometheus text for admins only, counting what the server actually did."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(live, key) -> httpx.Response:
    return httpx.get(live.url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def samples(text: str) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_tokens_latency_errors_and_feedback(live):
    client = live.client()
    before = samples(scrape(live, live.admin_key).text)
    ids = []
    for i in range(3):
        answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": f"metrics {i}"}],
                                                max_tokens=5, temperature=0)
        ids.append(answer.id)
    stream = client.chat.completions.create(model="support", messages=[{"role": "user", "content": "stream"}],
                                            max_tokens=4, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) is not None
    for completion_id, rating in zip(ids, (1, -1, -1), strict=True):
        response = httpx.post(live.url + "/v1/feedback", json={"completion_id": completion_id, "rating": rating},
                              headers={"Authorization": f"Bearer {live.user_key}"}, timeout=30)
        assert response.status_code == 200
    missing = httpx.post(live.url + "/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                         headers={"Authorization": f"Bearer {live.user_key}"}, timeout=30)
    assert missing.status_code == 404

    response = scrape(live, live.admin_key)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("tunery_requests_total", model="tiny") == 3 and grew("tunery_requests_total", model="support") == 1
    assert grew("tunery_tokens_total", model="tiny", kind="completion") >= 3
    assert grew("tunery_time_to_first_token_seconds_count", model="tiny") == 3
    assert grew("tunery_time_per_output_token_seconds_count", model="tiny") >= 1
    assert grew("tunery_errors_total", status="404", code="model_not_found") == 1
    assert after[("tunery_feedback", (("model", "tiny"), ("rating", "down")))] >= 2
    down = after[("tunery_thumbs_down_ratio", (("model", "tiny"),))]
    up = after[("tunery_feedback", (("model", "tiny"), ("rating", "up")))]
    assert down == after[("tunery_feedback", (("model", "tiny"), ("rating", "down")))] / (up + after[
        ("tunery_feedback", (("model", "tiny"), ("rating", "down")))])
    assert ("tunery_queue_depth", ()) in after


def test_metrics_need_an_admin_key(live):
    assert scrape(live, None).status_code == 401
    assert scrape(live, live.user_key).status_code == 403

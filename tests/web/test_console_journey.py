"""The console's journey in a real browser, on the tiny model: sign in, upload a file with errors and
see its line numbers, upload a good one, start a small job and watch its curve get points, see it
succeed, chat with the new model, correct an answer, review it, promote a version.
"""

from __future__ import annotations

import json
import re
import threading

import pytest

try:
    from playwright.sync_api import expect
except ImportError:  # the browser fixture skips (or fails under TUNERY_REQUIRE_BROWSER) with the reason
    expect = None

from tests.platform_data import TINY_TUNERY, chat_lines
from tests.web.conftest import shoot, sign_in

BAD_LINES = (chat_lines(3).decode()
             + '{"messages": [{"role": "user", "content": "hi"}]}\n'  # line 4: no assistant message
             + '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}\n')  # line 5


def go(page, name: str) -> None:
    page.get_by_role("navigation", name="Console pages").get_by_role("link", name=name, exact=True).click()


@pytest.fixture
def worker(console):
    """A worker on the server's database, running jobs in the background while the test drives the browser."""
    from tunery.platform.worker import Worker, WorkerSettings
    from tunery.store import open_store

    running = Worker(open_store(console.state.settings.database), WorkerSettings(heartbeat_s=0.3, poll_s=0.2))
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.stopping.set()
    thread.join(120)


def test_journey(page, console, worker, screenshots, tmp_path):
    bad, good = tmp_path / "tickets-bad.jsonl", tmp_path / "tickets.jsonl"
    bad.write_text(BAD_LINES)
    good.write_bytes(chat_lines(16))
    sign_in(page, console, console.user_key)

    go(page, "New job")
    page.get_by_label("Upload a training file").set_input_files(str(bad))
    page.get_by_role("button", name="Upload and check").click()
    problems = page.locator("table.problems")
    problems.wait_for()
    rows = problems.locator("tbody tr")
    lines = {rows.nth(i).locator("td").first.inner_text() for i in range(rows.count())}
    assert {"4", "5"} <= lines, lines
    assert "Fix the lines above" in page.locator("#upload-result").inner_text()
    shoot(page, screenshots, "new-job-errors")

    page.get_by_label("Upload a training file").set_input_files(str(good))
    page.get_by_role("button", name="Upload and check").click()
    page.get_by_text("passes the checks").wait_for()
    assert page.get_by_label("Training file").locator("option:checked").inner_text().startswith("tickets.jsonl")
    page.get_by_label("Name (suffix of the fine-tuned model)").fill("helpdesk")
    page.get_by_text("Advanced: tunery settings").click()
    tiny = json.loads(json.dumps(TINY_TUNERY))
    tiny["train"].update(max_steps=6, eval_every_steps=2)
    tiny["data"]["val_fraction"] = 0.25
    page.get_by_label(re.compile("config keys, as JSON")).fill(json.dumps(tiny))
    assert page.locator(".auto-choices").inner_text().count("train.") >= 3  # auto choices with reasons
    shoot(page, screenshots, "new-job")
    page.get_by_role("button", name="Start fine-tuning").click()
    page.wait_for_url(re.compile(r".*/ui/jobs/ftjob-[\w-]+$"))
    job_id = page.url.rsplit("/", 1)[1]

    curve = page.locator("#loss-curve")
    expect(curve).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=300_000)  # the curve gets points
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=300_000)
    # Every step's loss (and the validations), drawn by the page's live updates.
    expect(curve).to_have_attribute("data-points", re.compile(r"^([6-9]|[1-9][0-9]+)$"))
    assert page.locator("#loss-curve .uplot").count() == 1
    assert page.locator("ol.events li").count() >= 3
    assert page.locator("table tbody tr", has_text="ckpt-step-").count() >= 1
    shoot(page, screenshots, "job")

    go(page, "Jobs")
    row = page.get_by_role("row").filter(has_text=job_id)
    assert "succeeded" in row.inner_text()
    shoot(page, screenshots, "jobs")

    go(page, "Datasets")
    page.get_by_role("link", name="tickets.jsonl").first.click()
    assert page.locator("mark.trained").count() >= 1
    shoot(page, screenshots, "dataset")

    # Chat with the new model in the playground; thumbs-down with a correction.
    page.goto(console.ui(f"/jobs/{job_id}"))
    page.get_by_role("link", name=re.compile(r"^ft:tiny:helpdesk:")).click()
    expect(page.get_by_label("Model", exact=True)).to_have_value(re.compile(r"^ft:tiny:helpdesk:"))
    page.get_by_label("Message", exact=True).fill("Ticket 3: the printer on floor 3 is offline")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".message.assistant").first
    answer.locator("form.feedback").wait_for()
    completion_id = answer.get_attribute("data-completion-id")
    answer.get_by_label(re.compile("Correction")).fill("Hardware ticket: send a technician to floor 3.")
    answer.get_by_role("button", name=re.compile("Thumbs down")).click()
    answer.get_by_role("status").filter(has_text="Feedback recorded").wait_for()
    shoot(page, screenshots, "playground-tuned")

    # An admin finds it in the review queue and approves it.
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, console, console.admin_key)
    go(page, "Feedback review")
    item = page.locator("article.review-item", has_text=completion_id)
    expect(item.get_by_label(re.compile("Correction"))).to_have_value("Hardware ticket: send a technician to floor 3.")
    assert "ft:tiny:helpdesk:" in item.inner_text()
    shoot(page, screenshots, "feedback-review")
    item.get_by_role("button", name="Approve").click()
    expect(page.locator("article.review-item.done", has_text=completion_id)).to_contain_text("approved")
    from tunery.store.feedback_reviews import review_queue
    from tunery.store.owners import Actor

    approved = review_queue(console.state.store, Actor(None, admin=True), "approved")
    assert [i.completion.id for i in approved] == [completion_id]

    # The job registered its run as helpdesk@1: promote it to production and see the alias move.
    page.goto(console.ui(f"/jobs/{job_id}"))
    page.get_by_role("link", name="helpdesk@1").click()
    row = page.get_by_role("row").filter(has_text="helpdesk@1")
    row.get_by_role("button", name="Check and promote helpdesk@1").click()
    expect(page.get_by_text("No version holds production yet")).to_be_visible()
    shoot(page, screenshots, "promote")
    page.get_by_role("button", name="Confirm: move production to helpdesk@1").click()
    expect(page.locator(".alias", has_text="production")).to_contain_text("helpdesk@1")
    expect(page.get_by_role("row").filter(has_text="helpdesk@1").locator(".status.ok")).to_have_text("production")
    shoot(page, screenshots, "models")
    from tunery.platform.registry import resolve_version

    assert resolve_version(console.state.store, "helpdesk").ref == "helpdesk@1"

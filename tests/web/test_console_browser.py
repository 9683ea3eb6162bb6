"""The console in a real browser: sign-in, keys, the playground's streaming chat and feedback.

Each test saves screenshots of the pages it visits, at 1280 px and at a phone's width.
"""

from __future__ import annotations

import re

from tests.web.conftest import shoot, sign_in


def test_sign_in_with_the_keyboard_only(page, console, screenshots):
    page.goto(console.ui("/"))
    assert page.url.endswith("/ui/login")
    shoot(page, screenshots, "login")
    page.keyboard.press("Tab")  # the skip link first, then the key field (focused on load)
    page.get_by_label("API key").focus()
    page.keyboard.type(console.user_key)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/ui/jobs$"))
    assert page.get_by_role("heading", name="Fine-tuning jobs").is_visible()
    assert page.evaluate("document.cookie") == ""  # the session cookie is HttpOnly


def test_keys_create_shows_the_secret_once_and_revoke(page, console, screenshots):
    sign_in(page, console, console.admin_key)
    page.get_by_role("link", name="Keys").click()
    page.get_by_label("Name").fill("helpdesk-app")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("New key").input_value()
    assert secret.startswith("tny_")
    shoot(page, screenshots, "keys")
    row = page.get_by_role("row").filter(has_text="helpdesk-app")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke key helpdesk-app").click()
    page.wait_for_url(re.compile(r".*/ui/keys$"))
    assert "revoked" in page.get_by_role("row").filter(has_text="helpdesk-app").inner_text()
    assert secret not in page.content()  # shown once: the list never shows secrets
    from tunery.store import verify_key

    assert verify_key(console.state.store, secret) is None


def test_a_user_key_is_refused_the_admin_pages(page, console):
    sign_in(page, console, console.user_key)
    assert page.get_by_role("link", name="Keys").count() == 0
    response = page.goto(console.ui("/keys"))
    assert response.status == 403
    assert "needs an admin key" in page.get_by_role("alert").inner_text()


def test_playground_streams_side_by_side_and_records_a_correction(page, console, screenshots):
    sign_in(page, console, console.user_key)
    page.goto(console.ui("/playground"))
    page.get_by_label("Side by side: send each prompt to both models").check()
    page.get_by_label("Message", exact=True).fill("Please reset my VPN token")
    page.get_by_role("button", name="Send").click()
    answers = page.locator(".message.assistant")
    answers.nth(1).locator("form.feedback").wait_for()
    answers.nth(0).locator("form.feedback").wait_for()
    first_id = answers.nth(0).get_attribute("data-completion-id")
    assert first_id and first_id.startswith("chatcmpl-")
    assert answers.nth(0).locator(".content").inner_text().strip()
    shoot(page, screenshots, "playground")
    first = answers.nth(0)
    first.get_by_label(re.compile("Correction")).fill("Open the self-service portal and choose Reset token.")
    first.get_by_role("button", name=re.compile("Thumbs down")).click()
    first.get_by_role("status").filter(has_text="Feedback recorded").wait_for()
    answers.nth(1).get_by_role("button", name=re.compile("Thumbs up")).click()
    answers.nth(1).get_by_role("status").filter(has_text="good answer").wait_for()
    from tunery.store.owners import Actor
    from tunery.store.requests import list_rated_completions

    rated = list_rated_completions(console.state.store, Actor(key_id=console.user_key_id))
    by_id = {completion.id: feedback for completion, feedback in rated}
    assert by_id[first_id].rating == -1
    assert by_id[first_id].correction == "Open the self-service portal and choose Reset token."
    assert len(rated) == 2 and {completion.model for completion, _ in rated} == {"tiny"}

"""The console's fixtures: a real server over the tiny model, and Debian's Chromium driven by Playwright.

Browser tests skip (reason printed) when Chromium or Playwright is missing, unless
TUNERY_REQUIRE_BROWSER is set, as in CI: then they fail. Screenshots go to
TUNERY_SCREENSHOTS_DIR when set, else to a folder under the session's temporary directory.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.inference.conftest import one_torch_thread  # noqa: F401 (autouse fixture)
from tests.server.conftest import free_port, start_server

CHROMIUM = Path(os.environ.get("TUNERY_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}


@dataclass
class Console:
    url: str
    app: object
    state: object
    admin_key: str
    user_key: str
    user_key_id: str

    def ui(self, path: str = "/") -> str:
        return f"{self.url}/ui{path}"

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, follow_redirects=False)

    def signed_in_http(self, key: str) -> tuple[httpx.Client, str]:
        """An HTTP client with a console session for `key`, and the session's CSRF token."""
        client = self.http()
        form = client.get("/ui/login")
        client.post("/ui/login", data={"api_key": key, "csrf_token": csrf_of(form.text)})
        page = client.get("/ui/playground")
        assert page.status_code == 200, page.text
        return client, csrf_of(page.text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


@pytest.fixture(scope="module")
def console(tiny_model_dir, tmp_path_factory):
    from tunery.server.settings import ServerSettings
    from tunery.store import create_key, open_store

    db = tmp_path_factory.mktemp("console-db") / "tunery.db"
    store = open_store(db)
    _, admin_key = create_key(store, "admin", admin=True)
    user, user_key = create_key(store, "alice")
    store.close()
    settings = ServerSettings(model=str(tiny_model_dir), served_name="tiny", database=db, port=free_port(),
                              dtype="fp32", default_max_tokens=16)
    app, server, thread = start_server(settings)
    yield Console(url=f"http://127.0.0.1:{settings.port}", app=app, state=app.state.tunery,
                  admin_key=admin_key, user_key=user_key, user_key_id=user.id)
    server.should_exit = True
    thread.join(30)


def _browser_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="session")
def browser():
    missing = _browser_missing()
    if missing:
        if os.environ.get("TUNERY_REQUIRE_BROWSER"):
            pytest.fail(f"TUNERY_REQUIRE_BROWSER is set but {missing}")
        print(f"\nbrowser tests skipped: {missing}")
        pytest.skip(f"browser tests need Chromium: {missing}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory) -> Path:
    kept = os.environ.get("TUNERY_SCREENSHOTS_DIR")
    folder = Path(kept) if kept else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {folder}")
    return folder


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=WIDE)
    context.set_default_timeout(30_000)
    tab = context.new_page()
    problems: list[str] = []
    tab.on("pageerror", lambda error: problems.append(str(error)))
    # A refused request logs "Failed to load resource"; the tests check those statuses themselves.
    tab.on("console", lambda msg: problems.append(msg.text)
           if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    yield tab
    context.close()
    assert not problems, f"the page reported script errors: {problems}"


def sign_in(page, console: Console, key: str) -> None:
    page.goto(console.ui("/login"))
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/ui/(?!login).*"))


def shoot(page, screenshots: Path, name: str) -> Path:
    """Save a full-page screenshot at the page's width, plus one at a phone's width."""
    path = screenshots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    width = page.viewport_size
    page.set_viewport_size(NARROW)
    page.screenshot(path=str(screenshots / f"{name}-narrow.png"), full_page=True)
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    page.set_viewport_size(width)
    assert overflow <= 1, f"{name}: the page scrolls sideways by {overflow}px at {NARROW['width']}px wide"
    return path

"""The web page in a real browser (Playwright driving Debian's Chromium) against the native
stack: log in, upload with a progress bar, live status, waveform drawn, players, loudness."""

import shutil
import uuid

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.audio import signals
from tests.conftest import NativeStack

pytestmark = pytest.mark.e2e

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def test_upload_and_follow_a_job_in_the_browser(native_stack: NativeStack, tmp_path,
                                                artifacts_dir, monkeypatch) -> None:  # fmt: skip
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make test` installs it (Debian package chromium)"
    monkeypatch.setenv("HOME", str(tmp_path))  # Chromium writes its profile there
    username, password = f"page-{uuid.uuid4().hex[:8]}", "correct-horse-42"
    with native_stack.client() as client:
        account = {"username": username, "email": f"{username}@example.com", "password": password}
        signup = client.post("/api/auth/signup/", json=account)
        assert signup.status_code == 201
    hostile = "<img src=x onerror=document.title='pwned'>"
    source = signals.write(tmp_path / "show.flac", signals.program(16), "flac",
                           metadata={"title": hostile})  # fmt: skip

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_context(ignore_https_errors=True).new_page()
        page.goto(f"{native_stack.base_url}/jobs/")
        assert "/accounts/login/" in page.url
        page.fill("input[name=username]", username)
        page.fill("input[name=password]", password)
        page.click("button[type=submit]")
        page.wait_for_url("**/jobs/")

        page.set_input_files("#file", str(source))
        page.select_option("#preset", "podcast")
        page.click("#upload button[type=submit]")
        page.wait_for_selector("#upload-message:has-text('Uploaded')", timeout=30_000)
        assert page.eval_on_selector("#upload-progress", "el => el.value") == 100
        row = page.locator("#jobs tr[data-job]").first
        # Live status arrives by server-sent events.
        row.locator(".status-done").wait_for(timeout=120_000)

        row.locator("a").click()
        page.wait_for_selector("canvas#waveform[data-drawn]", timeout=30_000)
        assert int(page.get_attribute("canvas#waveform", "data-drawn")) > 100
        assert page.locator("audio").count() == 3
        assert "LUFS" in page.inner_text("main")
        tag_cell = page.locator("dd.tag").first
        assert hostile in tag_cell.inner_text()  # shown as text...
        assert tag_cell.locator("img").count() == 0  # ...never as markup
        assert page.title() != "pwned"
        page.screenshot(path=str(artifacts_dir / "job-page.png"), full_page=True)

        # The interactive API docs render under the site's CSP (no inline scripts).
        page.goto(f"{native_stack.base_url}/api/docs/")
        page.wait_for_selector(".swagger-ui .title:has-text('core audio API')", timeout=30_000)
        browser.close()


def test_event_stream_goes_through_nginx_unbuffered(native_stack: NativeStack) -> None:
    with native_stack.client() as client:
        assert client.get("/jobs/events/").status_code == 401
    with httpx.Client(base_url=native_stack.base_url, verify=native_stack.tls, timeout=10) as c:
        username = f"sse-{uuid.uuid4().hex[:8]}"
        c.post("/api/auth/signup/", json={"username": username, "email": "s@example.com",
                                          "password": "correct-horse-42"})  # fmt: skip
        login_page = c.get("/accounts/login/")
        token = login_page.cookies.get("csrftoken") or c.cookies.get("csrftoken")
        c.post("/accounts/login/", data={"username": username, "password": "correct-horse-42",
                                         "csrfmiddlewaretoken": token},
               headers={"Referer": f"{native_stack.base_url}/accounts/login/"})  # fmt: skip
        with c.stream("GET", "/jobs/events/") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = next(stream.iter_text())
            assert first.startswith("retry:")

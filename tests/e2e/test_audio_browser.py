"""The web page in a real browser (Playwright driving Debian's Chromium) against the native
stack: log in, upload with a progress bar, live status, waveform drawn, players, loudness."""

import shutil

from playwright.sync_api import sync_playwright

from testing import signals
from tests.conftest import PASSWORD, NativeStack

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_upload_and_follow_a_job_in_the_browser(
    native_stack: NativeStack, tmp_path, artifacts_dir, monkeypatch
) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: `make test` installs it (Debian package chromium)"
    monkeypatch.setenv("HOME", str(tmp_path))  # Chromium writes its profile there
    account = native_stack.signup("page")
    username, password = account.username, PASSWORD
    hostile = "<img src=x onerror=document.title='pwned'>"
    source = signals.write(
        tmp_path / "show.flac", signals.program(16), "flac", metadata={"title": hostile}
    )

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
        row.locator(".status-done").wait_for(timeout=120_000)
        # The status arrived by server-sent events, not by the polling fallback.
        assert page.get_attribute("#jobs", "data-live") == "sse"
        assert int(page.get_attribute("#jobs", "data-sse-events")) >= 3

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

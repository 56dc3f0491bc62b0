"""The audio workload end to end through the running native stack: nginx/TLS -> web ->
PgBouncer -> PostgreSQL; the real Celery worker; files through X-Accel-Redirect; real SMTP."""

import re
import time
from contextlib import closing
from html.parser import HTMLParser
from pathlib import Path

import psycopg

from audio.processing import media
from testing import signals
from tests import corpus, reference_meter
from tests.conftest import NativeStack
from tests.http_api import upload, wait_finished


def test_upload_to_download_through_the_stack(
    native_stack: NativeStack, smtp_sink, tmp_path
) -> None:
    with native_stack.client() as client:
        account = native_stack.signup("alice")
        auth = account.auth
        source = signals.write(tmp_path / "episode.m4a", signals.program(20), "m4a")
        response = upload(client, auth, source)
        assert response.status_code == 202, response.text
        job = wait_finished(client, auth, response.json()["id"])
        assert job["status"] == "done", job
        # (Live progress, event by event, is asserted in test_live_updates.)
        assert sorted(r["format"] for r in job["renditions"]) == ["aac", "mp3", "opus"]
        for rendition in job["renditions"]:
            download = client.get(rendition["download_url"], headers=auth)
            assert download.status_code == 200
            assert download.headers["content-type"] == rendition["content_type"]
            assert "attachment" in download.headers["content-disposition"]
            assert "strict-transport-security" in download.headers
            path = tmp_path / f"got.{rendition['format']}"
            path.write_bytes(download.content)
            measured = media.analyse(path, waveform=False).loudness
            assert abs(measured.integrated_lufs + 16) <= 1.0
            assert measured.true_peak_dbtp <= -1.0
            reference = reference_meter.measure(path)  # FFmpeg's ebur128, one decimal
            assert abs(reference.integrated_lufs + 16) <= 1.0, reference
            assert reference.true_peak_dbtp <= -1.0 + 0.1, reference
        peaks = client.get(job["waveform"]["json"], headers=auth).json()
        assert peaks["version"] == 2 and peaks["length"] > 100
        png = client.get(job["waveform"]["png"], headers=auth)
        assert png.content.startswith(b"\x89PNG")
        # The files themselves are not reachable without Django's permission check.
        direct = client.get(f"/protected-media/jobs/{job['id']}/rendition.mp3")
        assert direct.status_code == 404
        intruder = native_stack.signup("mallory").auth
        stolen = client.get(job["renditions"][0]["download_url"], headers=intruder)
        assert stolen.status_code == 404
    # The email: both parts name the file and each rendition's loudness, and link to the job's
    # page on this stack's own address (SITE_URL), which the owner then opens.
    email = smtp_sink.wait_for(lambda m: "episode.m4a" in m["subject"] and "ready" in m["subject"])
    link = f"{native_stack.base_url}/jobs/{job['id']}/"
    plain = email.get_body(("plain",)).get_content()
    html = HtmlParts(email.get_body(("html",)).get_content())
    assert f"Details and downloads: {link}" in plain
    assert html.links == [link]
    assert '"episode.m4a" is ready (podcast preset)' in plain and "episode.m4a" in html.strong
    for rendition in job["renditions"]:
        lufs = rendition["loudness"]["integrated_lufs"]
        assert f"- {rendition['format'].upper()}: {lufs} LUFS" in plain
        assert [rendition["format"].upper(), f"{lufs} LUFS"] == html.row(rendition["format"])[:2]
    with closing(native_stack.session(account)) as browser:
        page = browser.get(link.removeprefix(native_stack.base_url))
        assert page.status_code == 200 and "episode.m4a" in page.text


class HtmlParts(HTMLParser):
    """The links, bold text and table rows of an HTML email."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.strong = ""
        self.rows: list[list[str]] = []
        self._tag = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._tag = tag
        if tag == "a":
            self.links.append(dict(attrs)["href"] or "")
        elif tag == "tr":
            self.rows.append([])

    def handle_data(self, data: str) -> None:
        if self._tag == "strong":
            self.strong += data
        elif self._tag == "td" and data.strip():
            self.rows[-1].append(" ".join(data.split()))

    def handle_endtag(self, tag: str) -> None:
        self._tag = ""

    def row(self, fmt: str) -> list[str]:
        return next(r for r in self.rows if r and r[0] == fmt.upper())


def test_a_bad_file_fails_with_a_reason_and_an_email(native_stack, smtp_sink, tmp_path) -> None:
    with native_stack.client() as client:
        auth = native_stack.signup("bob").auth
        response = upload(client, auth, corpus.nan_samples(tmp_path))
        assert response.status_code == 202
        job = wait_finished(client, auth, response.json()["id"])
        assert job["status"] == "failed" and "NaN" in job["error"]
        rejected = upload(client, auth, corpus.ffconcat_as_wav(tmp_path))
        assert rejected.status_code == 400
        assert "not a supported audio format" in rejected.json()["detail"]
    smtp_sink.wait_for(lambda m: "could not be processed" in m["subject"])
    assert "Traceback" not in native_stack.log("celery_worker")


def encoders_of(job_id: str) -> list[int]:
    """The encoder processes (transcode.py, children of the worker) working on the job's source."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:  # gone meanwhile
            continue
        if b"transcode.py" in cmdline and f"jobs/{job_id}/".encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_cancelling_a_running_job_kills_its_encoder_and_keeps_nothing(
    native_stack: NativeStack, tmp_path
) -> None:
    """Cancel while the real worker's encoder runs: the job says canceled at once; the worker
    sees it at its next heartbeat (AUDIO_HEARTBEAT_S, 5 s) and kills the encoder within half a
    second; the run's files go, and the run does not come back as done or failed."""
    worker = native_stack.pid("celery_worker")
    account = native_stack.signup("canceler")
    # 590 s of a -60 dBFS tone with a click each second, 8 kHz mono: 1.7 MB of FLAC (under the
    # stack's UPLOAD_MAX_MB). The gain drives the clicks into the limiter: about 30 s of
    # encoding per format, so an encoder left running would outlive the bound below.
    samples = signals.tone(590, -60, 1, rate=8000)
    samples[::8000] = 0.1
    source = signals.write(tmp_path / "long.flac", samples, "flac", rate=8000)
    with native_stack.client() as client:
        response = upload(client, account.auth, source)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        assert wait_until(lambda: encoders_of(job_id), 120), "no encoder started"
        canceled = client.post(f"/api/jobs/{job_id}/cancel/", headers=account.auth)
        assert canceled.status_code == 200, canceled.text
        assert client.get(f"/api/jobs/{job_id}/", headers=account.auth).json()["status"] == (
            "canceled"
        )
        # The run gives up (killing its encoder) within the heartbeat's 5 s and half a second
        # to notice, nearly three times over for a loaded machine; a run that let its encoders
        # finish the format would take up to 30 s.
        stopped = f"job {job_id}: task .* stopped \\(canceled"
        assert wait_until(lambda: re.search(stopped, native_stack.log("celery_worker")), 15)
        assert encoders_of(job_id) == []
        directory = native_stack.media_root / "jobs" / job_id
        assert sorted(p.name for p in directory.iterdir()) == ["source"]
        job = client.get(f"/api/jobs/{job_id}/", headers=account.auth).json()
        assert (job["status"], job["renditions"], job["error"]) == ("canceled", [], ""), job
        assert client.delete(f"/api/jobs/{job_id}/", headers=account.auth).status_code == 204
        assert not directory.exists()
    assert native_stack.pid("celery_worker") == worker
    assert "Traceback" not in native_stack.log("celery_worker")


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_beat_schedules_are_in_the_database_for_operators(native_stack: NativeStack) -> None:
    with psycopg.connect(native_stack.env["DATABASE_DIRECT_URL"]) as conn:
        rows = dict(
            conn.execute(
                "SELECT task, enabled FROM django_celery_beat_periodictask "
                "WHERE task LIKE 'audio.%'"
            ).fetchall()
        )
    assert rows == {
        "audio.recover_stuck_jobs": True,
        "audio.purge_expired_files": True,
        "audio.send_daily_summary": True,
    }

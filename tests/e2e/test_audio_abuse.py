"""The bad-input corpus and the cross-user walk through the running stack: nginx/TLS -> web ->
the real Celery worker (its pipeline, `JobTask.on_failure`, its mail), files behind nginx's
X-Accel-Redirect, the event stream from the events process."""

import time
from contextlib import closing

import pytest

from testing import signals
from tests import corpus
from tests.conftest import NativeStack
from tests.http_api import upload, wait_finished
from tests.sse import streams_open


@pytest.fixture(scope="module")
def worker_pid(native_stack: NativeStack) -> int:
    return native_stack.pid("celery_worker")


def job_folders(native_stack: NativeStack) -> set[str]:
    jobs = native_stack.media_root / "jobs"
    return {p.name for p in jobs.iterdir()} if jobs.exists() else set()


@pytest.mark.parametrize("case", sorted(corpus.CORPUS))
def test_bad_input_corpus_through_the_worker(native_stack, worker_pid, smtp_sink, tmp_path, case):
    maker, outcome, reason = corpus.CORPUS[case]
    account = native_stack.signup("corpus")
    before = job_folders(native_stack)
    with native_stack.client() as client:
        response = upload(client, account.auth, maker(tmp_path))
        if outcome == "400":
            assert response.status_code == 400, response.text
            assert reason in response.json()["detail"]
            assert client.get("/api/jobs/", headers=account.auth).json()["results"] == []
            assert job_folders(native_stack) == before  # nothing of it reached the disk
        else:
            assert response.status_code == 202, response.text
            job = wait_finished(client, account.auth, response.json()["id"])
            assert corpus.problem(case, job) == "", job
            # Every file the job wrote is inside its own folder.
            assert job_folders(native_stack) - before == {job["id"]}
    if outcome == "failed":  # JobTask.on_failure's mail, from the worker
        smtp_sink.wait_for(
            lambda m: account.username in m["to"] and "could not be processed" in m["subject"]
        )
    # The worker survived it: the same process, and no traceback.
    assert native_stack.pid("celery_worker") == worker_pid
    assert "Traceback" not in native_stack.log("celery_worker")


def statuses(stream, job_id: str) -> list[str]:
    return [event["status"] for _, event in stream.events if event["id"] == job_id]


def test_nobody_reaches_another_users_jobs_through_the_stack(native_stack, tmp_path) -> None:
    owner, intruder = native_stack.signup("owner"), native_stack.signup("intruder")
    source = signals.write(tmp_path / "private.flac", signals.program(6), "flac")
    with native_stack.client() as client:
        job = wait_finished(client, owner.auth, upload(client, owner.auth, source).json()["id"])
        assert job["status"] == "done", job
        job_id = job["id"]
        urls = [
            ("GET", f"/api/jobs/{job_id}/"),
            ("DELETE", f"/api/jobs/{job_id}/"),
            ("POST", f"/api/jobs/{job_id}/cancel/"),
            ("POST", f"/api/jobs/{job_id}/rerun/"),
            *[("GET", r["download_url"]) for r in job["renditions"]],
            *[("GET", url) for url in job["waveform"].values()],
        ]
        assert len(urls) >= 9  # 4 actions, 3 renditions, 2 waveforms
        for method, url in urls:
            response = client.request(method, url, headers=intruder.auth)
            assert response.status_code == 404, (method, url, response.status_code)
            assert not response.headers.get("content-disposition"), (method, url)
        assert client.get("/api/jobs/", headers=intruder.auth).json()["results"] == []
        # nginx serves /protected-media/ only on Django's say-so (internal location).
        direct = client.get(f"/protected-media/jobs/{job_id}/rendition.mp3")
        assert direct.status_code == 404
    # The page, and the event stream while the owner's job runs again.
    with (
        closing(native_stack.session(intruder)) as browser,
        streams_open([native_stack.session(intruder)]) as (intruder_stream,),
        streams_open([native_stack.session(owner)]) as (owner_stream,),
        native_stack.client() as client,
    ):
        assert browser.get(f"/jobs/{job_id}/").status_code == 404
        assert job_id not in browser.get("/jobs/").text
        assert client.post(f"/api/jobs/{job_id}/rerun/", headers=owner.auth).status_code == 202
        deadline = time.monotonic() + 120
        # The snapshot shows it done already: wait for it to run again and be done.
        while not ("processing" in (seen := statuses(owner_stream, job_id)) and seen[-1] == "done"):
            assert time.monotonic() < deadline, owner_stream.events
            time.sleep(0.2)
        assert statuses(intruder_stream, job_id) == []
    # Still the owner's, untouched by every attempt above.
    with native_stack.client() as client:
        assert client.get(f"/api/jobs/{job_id}/", headers=owner.auth).json()["status"] == "done"

"""MEDIA_STORAGE=s3: a job's files in an S3-compatible bucket, so that web and workers on
different hosts share them. Against a real S3 server (s3rver, from npm, pinned in
tests/s3rver/package-lock.json), real boto3, the real API and pipeline: the upload is received
with one MEDIA_ROOT (the web host's), processed with another (a worker host's; the task is taken
from the queue by hand, where the broker would carry it), and neither keeps a copy. Downloads are
redirects to signed URLs after the same permission check; deleting the job empties its folder."""

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from django.core.files.storage import default_storage

from audio.models import Job
from audio.services import jobs, pipeline
from testing import signals
from tests.factories import client_for, upload
from tests.ports import free_port, wait_listening
from tests.stack_env import REPO_DIR

pytestmark = pytest.mark.django_db(transaction=True)

BUCKET = "core-media"
S3RVER_KEY = "S3RVER"  # s3rver's fixed credentials


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory) -> Iterator[str]:
    if shutil.which("npm") is None:
        pytest.fail("npm is not installed (Node.js runs the S3 server of these tests)")
    install = REPO_DIR / "var" / "s3rver"
    install.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copy(REPO_DIR / "tests" / "integration" / "s3rver" / name, install / name)
    if not (install / "node_modules" / ".bin" / "s3rver").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=install,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    port = free_port()
    data = tmp_path_factory.mktemp("s3-data")
    server = subprocess.Popen(
        [
            install / "node_modules" / ".bin" / "s3rver",
            "--directory",
            str(data),
            "--address",
            "127.0.0.1",
            "--port",
            str(port),
            "--configure-bucket",
            BUCKET,
            "--silent",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_listening(port, server)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(10)


@pytest.fixture
def s3_media(settings, s3_endpoint, tmp_path) -> dict[str, Path]:
    options = {
        **settings.MEDIA_STORE["s3"]["OPTIONS"],
        "bucket_name": BUCKET,
        "endpoint_url": s3_endpoint,
        "access_key": S3RVER_KEY,
        "secret_key": S3RVER_KEY,
    }
    settings.MEDIA_STORAGE = "s3"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**settings.MEDIA_STORE["s3"], "OPTIONS": options},
    }
    settings.AUDIO_MAX_DURATION_S = 600
    return {"web": tmp_path / "web-host", "worker": tmp_path / "worker-host"}


def bucket_files(job_id: str) -> set[str]:
    return set(default_storage.listdir(f"jobs/{job_id}")[1])


def test_web_and_worker_share_a_job_through_the_bucket(s3_media, settings, monkeypatch, tmp_path):
    queued: list[tuple[str, str]] = []
    monkeypatch.setattr(jobs, "enqueue_run", lambda *task: queued.append(tuple(map(str, task))))
    client = client_for("s3-alice")
    settings.MEDIA_ROOT = s3_media["web"]
    response = upload(client, signals.write(tmp_path / "tone.wav", signals.tone(3)))
    assert response.status_code == 202, response.content
    job_id = response.json()["id"]
    assert bucket_files(job_id) == {"source"}
    assert not (s3_media["web"] / "jobs" / job_id).exists()  # no copy kept on the web host

    settings.MEDIA_ROOT = s3_media["worker"]  # another host: only the bucket is shared
    pipeline.process_job(*queued[0])
    job = Job.objects.get(pk=job_id)
    assert job.status == Job.Status.DONE, job.error
    renditions = {r.format: r for r in job.renditions.all()}
    assert sorted(renditions) == ["aac", "mp3", "opus"]
    waveform = {"waveform.json", "waveform.dat", "waveform.png"}
    assert bucket_files(job_id) == {
        "source",
        *waveform,
        *(r.file_name for r in renditions.values()),
    }
    assert not (s3_media["worker"] / "jobs" / job_id).exists()

    settings.MEDIA_ROOT = s3_media["web"]
    download = client.get(f"/api/jobs/{job_id}/renditions/mp3/")
    assert download.status_code == 302, download.content
    signed = httpx.get(download["Location"])
    assert signed.status_code == 200 and len(signed.content) == renditions["mp3"].size
    assert signed.headers["content-type"] == renditions["mp3"].content_type
    assert "attachment" in signed.headers["content-disposition"]
    assert client.get(f"/api/jobs/{job_id}/waveform.png/").status_code == 302
    assert client_for("s3-mallory").get(f"/api/jobs/{job_id}/renditions/mp3/").status_code == 404

    assert client.delete(f"/api/jobs/{job_id}/").status_code == 204
    assert bucket_files(job_id) == set()

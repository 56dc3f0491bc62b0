"""The audio API with real PostgreSQL and real processing (Celery runs each task eagerly in this
process, with its task id). The bad-input corpus and the cross-user walk run through the real
stack and worker in test_e2e_abuse; the upload-to-download path in test_e2e_audio."""

from pathlib import Path

import pytest
from rest_framework.test import APIClient

from audio.models import Job
from core.celery import app as celery_app
from testing import signals
from tests.factories import client_for, upload

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.AUDIO_MAX_DURATION_S = 600
    return settings.MEDIA_ROOT


@pytest.fixture(autouse=True)
def eager_tasks():
    """Tasks run when sent, in this process, with their own task ids (as the worker would)."""
    celery_app.conf.update(task_always_eager=True, task_eager_propagates=True)
    yield
    celery_app.conf.update(task_always_eager=False, task_eager_propagates=False)


def test_presets_are_listed(tmp_path) -> None:
    response = client_for("p").get("/api/presets/")
    names = {p["name"]: p for p in response.json()}
    assert names["podcast"]["target_lufs"] == -16 and names["broadcast"]["target_lufs"] == -23
    assert names["streaming"]["target_lufs"] == -14
    assert set(names["podcast"]["formats"]) == {"mp3", "aac", "opus"}


def test_upload_process_and_download(tmp_path, mailoutbox) -> None:
    client = client_for("alice")
    source = signals.write(tmp_path / "voice.flac", signals.program(8), "flac")
    response = upload(client, source)
    assert response.status_code == 202, response.content
    job = client.get(f"/api/jobs/{response.json()['id']}/").json()
    assert job["status"] == "done", job
    assert job["progress"] == 100
    assert job["source_metadata"]["codec"] == "flac"
    assert job["loudness_before"]["integrated_lufs"] is not None
    assert {r["format"] for r in job["renditions"]} == {"mp3", "aac", "opus"}
    for fmt, loudness in job["loudness_after"].items():
        assert abs(loudness["integrated_lufs"] + 16) <= 1, fmt
        assert loudness["true_peak_dbtp"] <= -1, fmt
    rendition = client.get(job["renditions"][0]["download_url"])
    assert rendition.status_code == 200
    assert rendition["X-Accel-Redirect"].startswith(f"/protected-media/jobs/{job['id']}/rendition.")
    for kind in ("json", "dat", "png"):
        response = client.get(job["waveform"][kind])
        assert response["X-Accel-Redirect"] == f"/protected-media/jobs/{job['id']}/waveform.{kind}"
    assert len(mailoutbox) == 1 and "is ready" in mailoutbox[0].subject
    assert mailoutbox[0].alternatives  # an HTML part too


def test_unsafe_file_names_never_reach_the_disk(tmp_path, media_root) -> None:
    client = client_for("bob")
    source = signals.write(tmp_path / "a.wav", signals.tone(1))
    for name in ["../../etc/passwd.wav", "..\\..\\boot.ini", "\u202egnp.wav", "名前 🎵.wav"]:
        response = upload(client, source, name=name)
        assert response.status_code == 202
        job = Job.objects.get(pk=response.json()["id"])
        assert "\u202e" not in job.original_name
        assert sorted(p.name for p in job.directory.iterdir())[0].startswith("rendition")
        assert job.directory.parent == Path(media_root) / "jobs"


def test_size_cap_and_unknown_preset(tmp_path, settings) -> None:
    client = client_for("carol")
    source = signals.write(tmp_path / "a.wav", signals.tone(2))
    settings.UPLOAD_MAX_BYTES = 1000
    settings.UPLOAD_MAX_MB = 0
    assert upload(client, source).status_code == 413
    settings.UPLOAD_MAX_BYTES = 10**9
    response = upload(client, source, preset="loud")
    assert response.status_code == 400 and "preset" in response.json()


def test_list_filter_cancel_rerun_delete(tmp_path) -> None:
    client = client_for("dave")
    source = signals.write(tmp_path / "a.wav", signals.tone(2, -20))
    job_id = upload(client, source).json()["id"]
    listing = client.get("/api/jobs/?status=done").json()
    assert [j["id"] for j in listing["results"]] == [job_id]
    assert client.get("/api/jobs/?status=failed").json()["results"] == []
    assert client.post(f"/api/jobs/{job_id}/cancel/").status_code == 409  # already done
    rerun = client.post(f"/api/jobs/{job_id}/rerun/")
    assert rerun.status_code == 202
    assert client.get(f"/api/jobs/{job_id}/").json()["status"] == "done"
    directory = Job.objects.get(pk=job_id).directory
    assert client.delete(f"/api/jobs/{job_id}/").status_code == 204
    assert not directory.exists()
    assert client.get(f"/api/jobs/{job_id}/").status_code == 404


def test_anonymous_is_refused_and_schema_is_served() -> None:
    anonymous = APIClient()
    assert anonymous.get("/api/jobs/").status_code == 401
    schema = anonymous.get("/api/schema/")
    assert schema.status_code == 200 and b"/api/jobs/" in schema.content
    assert anonymous.get("/api/docs/").status_code == 200


def test_signup_and_token(tmp_path) -> None:
    anonymous = APIClient()
    weak = anonymous.post(
        "/api/auth/signup/", {"username": "eve", "email": "e@x.io", "password": "123"}
    )
    assert weak.status_code == 400
    created = anonymous.post(
        "/api/auth/signup/", {"username": "erin", "email": "e@x.io", "password": "correct-horse-9"}
    )
    assert created.status_code == 201
    token = anonymous.post("/api/auth/token/", {"username": "erin", "password": "correct-horse-9"})
    assert token.json()["token"] == created.json()["token"]
    authed = APIClient(HTTP_AUTHORIZATION=f"Token {token.json()['token']}")
    assert authed.get("/api/jobs/").status_code == 200

"""Beat's jobs (purge, stuck jobs, daily summary), rate limits and password reset, on real
PostgreSQL; mail through Django's test outbox."""

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.api import LoginThrottle
from audio import services, tasks
from audio.models import Job, Rendition
from audio.permissions import UploadThrottle

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def user():
    return get_user_model().objects.create_user("olga", "olga@example.com", "pw-123456!")


@pytest.fixture
def queued(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(tasks.process_job, "delay", sent.append)
    return sent


def make_job(user, tmp_path, settings, **fields) -> Job:
    settings.MEDIA_ROOT = tmp_path
    job = Job.objects.create(owner=user, preset="podcast", original_name="a.wav", **fields)
    job.directory.mkdir(parents=True)
    job.source_path.write_bytes(b"x")
    return job


def test_purge_removes_files_of_expired_jobs_only(user, tmp_path, settings) -> None:
    settings.AUDIO_RETENTION_DAYS = 7
    old = make_job(user, tmp_path, settings, status="done",
                   finished_at=timezone.now() - timedelta(days=8))  # fmt: skip
    Rendition.objects.create(job=old, format="mp3", content_type="audio/mpeg", file_name="r.mp3")
    recent = make_job(user, tmp_path, settings, status="done",
                      finished_at=timezone.now() - timedelta(days=1))  # fmt: skip
    assert services.purge_expired_files() == 1
    old.refresh_from_db()
    assert old.files_purged_at and not old.directory.exists() and not old.renditions.exists()
    assert recent.directory.exists()
    assert services.purge_expired_files() == 0  # idempotent
    assert not services.rerun_job(old)  # nothing left to re-run


def test_stuck_jobs_are_requeued_then_failed(user, tmp_path, settings, queued, mailoutbox) -> None:
    settings.AUDIO_STUCK_AFTER_S = 600
    settings.AUDIO_MAX_ATTEMPTS = 2
    stale = timezone.now() - timedelta(hours=1)
    retry = make_job(user, tmp_path, settings, status="processing", attempts=1, heartbeat_at=stale)
    give_up = make_job(
        user, tmp_path, settings, status="processing", attempts=2, heartbeat_at=stale
    )
    alive = make_job(user, tmp_path, settings, status="processing", attempts=1,
                     heartbeat_at=timezone.now())  # fmt: skip
    assert services.recover_stuck_jobs() == {"requeued": 1, "failed": 1}
    retry.refresh_from_db(), give_up.refresh_from_db(), alive.refresh_from_db()
    assert retry.status == "queued" and queued == [str(retry.pk)]
    assert give_up.status == "failed" and "giving up" in give_up.error
    assert alive.status == "processing"


def test_daily_summary_goes_to_staff(user, tmp_path, settings) -> None:
    get_user_model().objects.create_user("boss", "boss@example.com", "pw-123456!", is_staff=True)
    make_job(user, tmp_path, settings, status="failed", error="bad file",
             finished_at=timezone.now())  # fmt: skip
    assert services.send_daily_summary() == 1
    (message,) = mail.outbox
    assert message.to == ["boss@example.com"] and "1 failed" in message.subject
    assert "bad file" in message.body


def test_upload_rate_limit(user, monkeypatch) -> None:
    monkeypatch.setattr(UploadThrottle, "THROTTLE_RATES", {"uploads": "2/hour"})
    cache.clear()
    client = APIClient()
    client.force_authenticate(user)
    codes = [client.post("/api/jobs/", {"preset": "podcast"}, format="multipart").status_code
             for _ in range(3)]  # fmt: skip
    assert codes == [400, 400, 429]


def test_login_rate_limit(monkeypatch) -> None:
    monkeypatch.setattr(LoginThrottle, "THROTTLE_RATES", {"login": "3/minute"})
    cache.clear()
    client = APIClient()
    codes = [client.post("/api/auth/token/", {"username": "x", "password": "y"}).status_code
             for _ in range(4)]  # fmt: skip
    assert codes == [400, 400, 400, 429]


def test_password_reset_by_email(user, mailoutbox) -> None:
    client = Client()
    response = client.post("/accounts/password_reset/", {"email": "olga@example.com"})
    assert response.status_code == 302
    (message,) = mailoutbox
    link = next(line for line in message.body.splitlines() if "/accounts/reset/" in line)
    path = link[link.index("/accounts/reset/") :].strip()
    form = client.get(path, follow=True)
    assert form.status_code == 200
    new = "brand-new-pass-77"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert done.status_code == 302
    assert client.login(username="olga", password="brand-new-pass-77")


def test_pages_need_login_and_show_only_own_jobs(user, tmp_path, settings) -> None:
    other = get_user_model().objects.create_user("pete", "p@example.com", "pw-123456!")
    mine = make_job(user, tmp_path, settings, status="done")
    theirs = make_job(other, tmp_path, settings, status="done")
    client = Client()
    assert client.get("/jobs/").status_code == 302
    client.force_login(user)
    page = client.get("/jobs/")
    assert str(mine.pk) in page.text and str(theirs.pk) not in page.text
    assert client.get(f"/jobs/{theirs.pk}/").status_code == 404
    assert client.get(f"/jobs/{mine.pk}/").status_code == 200


def test_admin_lists_jobs_with_filters_and_actions(user, tmp_path, settings, queued) -> None:
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-123456!")
    job = make_job(user, tmp_path, settings, status="done", finished_at=timezone.now())
    client = Client()
    client.force_login(admin)
    page = client.get("/admin/audio/job/?status__exact=done&q=a.wav")
    assert page.status_code == 200 and str(job.pk) in page.text
    assert 'value="rerun"' in page.text and 'value="cancel"' in page.text
    response = client.post("/admin/audio/job/", {"action": "rerun", "_selected_action": [job.pk]})
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == "queued" and queued == [str(job.pk)]
    assert client.get("/admin/django_celery_beat/periodictask/").status_code == 200

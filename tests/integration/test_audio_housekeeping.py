"""Beat's jobs (purge, stuck jobs, daily summary), rate limits and password reset, on real
PostgreSQL; mail through Django's test outbox."""

import time
import uuid
from datetime import timedelta

import kombu
import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.throttles import LoginThrottle
from audio.models import Job, Rendition
from audio.permissions import UploadThrottle
from audio.services import housekeeping, jobs, notifications
from core import broker
from core.celery import app as celery_app
from tests.factories import make_job, waiting_in_broker

pytestmark = pytest.mark.django_db(transaction=True)


def test_purge_removes_files_of_expired_jobs_only(user, tmp_path, settings) -> None:
    settings.AUDIO_RETENTION_DAYS = 7
    old = make_job(
        user, tmp_path, settings, status="done", finished_at=timezone.now() - timedelta(days=8)
    )
    Rendition.objects.create(job=old, format="mp3", content_type="audio/mpeg", file_name="r.mp3")
    recent = make_job(
        user, tmp_path, settings, status="done", finished_at=timezone.now() - timedelta(days=1)
    )
    assert housekeeping.purge_expired_files() == 1
    old.refresh_from_db()
    assert old.files_purged_at and not old.directory.exists() and not old.renditions.exists()
    assert recent.directory.exists()
    assert housekeeping.purge_expired_files() == 0  # idempotent
    with pytest.raises(jobs.Refused, match="deleted"):
        jobs.rerun_job(old)  # nothing left to re-run


def test_the_broker_shows_waiting_and_recently_delivered_tasks(broker_queue) -> None:
    send = celery_app.send_task
    send("audio.process_job", ("a",), task_id="delivered-task", queue=broker_queue)
    send("audio.process_job", ("b",), task_id="waiting-task", queue=broker_queue)
    with celery_app.connection_for_read() as connection, connection.channel() as channel:
        # As a worker receives a task: out of the queue, into kombu's unacknowledged set.
        message = kombu.Queue(broker_queue, channel=channel).get(no_ack=False)
        assert message.headers["id"] == "delivered-task"
        try:
            recent = broker.pending_task_ids(delivered_within_s=60, queues=(broker_queue,))
            assert {"delivered-task", "waiting-task"} <= recent
            time.sleep(0.05)  # delivered longer ago than the window: a dead worker's, say
            older = broker.pending_task_ids(delivered_within_s=0.01, queues=(broker_queue,))
            assert "waiting-task" in older and "delivered-task" not in older
        finally:
            message.ack()


def test_recovery_requeues_only_jobs_whose_task_is_gone(
    user, tmp_path, settings, queued, broker_queue
) -> None:
    settings.AUDIO_HEARTBEAT_TIMEOUT_S = 30
    settings.AUDIO_QUEUED_GRACE_S = 60
    settings.AUDIO_MAX_ATTEMPTS = 2
    long_ago = timezone.now() - timedelta(hours=1)

    def job(status: str, **fields) -> Job:
        return make_job(
            user,
            tmp_path,
            settings,
            status=status,
            task_id=str(uuid.uuid4()),
            queued_at=long_ago,
            **fields,
        )

    died = job("processing", attempts=1, heartbeat_at=long_ago)
    died_too_often = job("processing", attempts=2, heartbeat_at=long_ago)
    alive = job("processing", attempts=1, heartbeat_at=timezone.now())
    lost = job("queued")  # its message never reached the broker (or the broker lost it)
    backlog = job("queued")  # waits its turn in a long queue: must not get a second task
    redelivered = job("processing", attempts=1, heartbeat_at=long_ago)  # back in the queue
    waiting_in_broker(broker_queue, backlog.task_id, backlog.pk)
    waiting_in_broker(broker_queue, redelivered.task_id, redelivered.pk)

    for _sweep in range(3):  # every sweep, not only the first, leaves waiting tasks alone
        result = housekeeping.recover_stuck_jobs()
        assert result["left_to_their_task"] == 2
    for j in (died, died_too_often, alive, lost, backlog, redelivered):
        j.refresh_from_db()
    assert {job_id for job_id, _ in queued} == {str(died.pk), str(lost.pk)}
    assert len(queued) == 2, "a job got a second task"
    assert died.status == lost.status == "queued"
    assert dict(queued)[str(died.pk)] == died.task_id  # the new task owns the run
    assert died_too_often.status == "failed" and "giving up" in died_too_often.error
    assert alive.status == "processing" and redelivered.status == "processing"
    assert backlog.status == "queued"


def test_daily_summary_goes_to_staff(user, tmp_path, settings) -> None:
    get_user_model().objects.create_user("boss", "boss@example.com", "pw-123456!", is_staff=True)
    make_job(
        user, tmp_path, settings, status="failed", error="bad file", finished_at=timezone.now()
    )
    assert notifications.send_daily_summary() == 1
    (message,) = mail.outbox
    assert message.to == ["boss@example.com"] and "1 failed" in message.subject
    assert "bad file" in message.body


def test_upload_rate_limit(user, monkeypatch) -> None:
    monkeypatch.setattr(UploadThrottle, "THROTTLE_RATES", {"uploads": "2/hour"})
    cache.clear()
    client = APIClient()
    client.force_authenticate(user)
    codes = [
        client.post("/api/jobs/", {"preset": "podcast"}, format="multipart").status_code
        for _ in range(3)
    ]
    assert codes == [400, 400, 429]


def test_login_rate_limit(monkeypatch) -> None:
    monkeypatch.setattr(LoginThrottle, "THROTTLE_RATES", {"login": "3/minute"})
    cache.clear()
    client = APIClient()
    codes = [
        client.post("/api/auth/token/", {"username": "x", "password": "y"}).status_code
        for _ in range(4)
    ]
    assert codes == [400, 400, 400, 429]


def test_password_reset_by_email(user, mailoutbox) -> None:
    client = Client()
    response = client.post("/accounts/password_reset/", {"email": user.email})
    assert response.status_code == 302
    (message,) = mailoutbox
    link = next(line for line in message.body.splitlines() if "/accounts/reset/" in line)
    path = link[link.index("/accounts/reset/") :].strip()
    form = client.get(path, follow=True)
    assert form.status_code == 200
    new = "brand-new-pass-77"
    done = client.post(form.redirect_chain[-1][0], {"new_password1": new, "new_password2": new})
    assert done.status_code == 302
    assert client.login(username=user.username, password="brand-new-pass-77")


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
    assert job.status == "queued" and queued == [(str(job.pk), job.task_id)]
    assert client.get("/admin/django_celery_beat/periodictask/").status_code == 200

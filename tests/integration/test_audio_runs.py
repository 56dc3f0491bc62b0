"""Jobs run exactly once: runs owned by their task, takeover after a dead worker's heartbeat
goes stale, conditional cancel/re-run, one email per run, per-user limits, and the events the
streams receive. Real PostgreSQL and the test stack's Redis; real processing where it runs."""

import io
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from audio.models import Job
from audio.permissions import JobActionThrottle
from audio.services import events, jobs, notifications, pipeline
from testing import signals
from tests.factories import make_job, make_user

pytestmark = pytest.mark.django_db(transaction=True)


def real_job(user, tmp_path, settings, seconds: float = 4, **fields) -> Job:
    """A queued job with a real source file (a short musical programme, FLAC)."""
    job = make_job(user, tmp_path, settings, status="queued", task_id=str(uuid.uuid4()), **fields)
    signals.write(job.source_path, signals.program(seconds), "flac")
    return job


def test_only_the_owning_task_claims_and_a_live_run_is_not_taken(user, tmp_path, settings):
    settings.AUDIO_HEARTBEAT_TIMEOUT_S = 30
    job = make_job(user, tmp_path, settings, status="queued", task_id="task-a")
    assert pipeline.claim(str(job.pk), "stale-task") is None  # a task of an earlier run
    assert pipeline.claim(str(job.pk), "task-a").attempts == 1
    # A second delivery of the same task while the first is alive must wait, not run too.
    with pytest.raises(pipeline.Busy) as busy:
        pipeline.claim(str(job.pk), "task-a")
    assert 25 <= busy.value.retry_in <= 31
    # The first delivery's worker died: its heartbeat goes stale and the redelivery takes over.
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    assert pipeline.claim(str(job.pk), "task-a").attempts == 2


def test_a_run_that_keeps_killing_its_worker_fails_after_max_attempts(user, tmp_path, settings):
    settings.AUDIO_MAX_ATTEMPTS = 2
    stale = timezone.now() - timedelta(hours=1)
    job = make_job(
        user, tmp_path, settings, status="processing", task_id="t", attempts=2, heartbeat_at=stale
    )
    assert pipeline.claim(str(job.pk), "t") is None
    job.refresh_from_db()
    assert job.status == "failed" and "giving up" in job.error and job.task_id == ""


def test_a_canceled_run_commits_nothing_and_lets_go(user, tmp_path, settings, queued):
    """The worker's run and the owner's cancel race for real (two threads, two connections); the
    running encoder is killed at the next heartbeat, not left to finish its minutes of audio."""
    settings.AUDIO_HEARTBEAT_S = 0.5
    job = real_job(user, tmp_path, settings, seconds=240)
    worker = threading.Thread(
        target=lambda: (pipeline.process_job(str(job.pk), job.task_id), connection.close())
    )
    worker.start()
    deadline = time.monotonic() + 60
    while not Job.objects.get(pk=job.pk).phase.startswith("encoding"):
        assert time.monotonic() < deadline and worker.is_alive(), "the run never reached encoding"
        time.sleep(0.02)
    canceled_at = time.monotonic()
    jobs.cancel_job(job)
    worker.join(60)
    # A heartbeat (0.5 s) and a look at it (0.5 s); encoding 4 minutes of audio to MP3 takes
    # several seconds here, so 2.5 s (generous for a loaded machine) shows it was stopped.
    assert time.monotonic() - canceled_at < 2.5
    job.refresh_from_db()
    assert job.status == "canceled" and job.task_id == ""  # the run let go
    assert not job.renditions.exists()
    assert not list(job.directory.glob("rendition*")) and not list(job.directory.glob("run-*"))
    jobs.rerun_job(job)  # allowed once the canceled run has stopped
    (job_id, task_id), *_ = queued
    pipeline.process_job(job_id, task_id)
    job.refresh_from_db()
    assert job.status == "done" and job.renditions.count() == 3


def test_rerun_waits_for_a_canceled_run_that_is_still_stopping(user, tmp_path, settings, queued):
    job = make_job(
        user,
        tmp_path,
        settings,
        status="canceled",
        task_id="still-running",
        heartbeat_at=timezone.now(),
    )
    with pytest.raises(jobs.Refused) as refused:
        jobs.rerun_job(job)
    assert refused.value.status == 409 and queued == []
    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    jobs.rerun_job(job)  # its worker died without letting go: the heartbeat tells
    assert len(queued) == 1 and Job.objects.get(pk=job.pk).status == "queued"


def test_concurrent_reruns_and_cancels_queue_at_most_one_task_at_a_time(
    user, tmp_path, settings, queued
):
    settings.AUDIO_MAX_ACTIVE_JOBS = 100
    job = make_job(user, tmp_path, settings, status="done", finished_at=timezone.now())

    def act(i: int) -> str:
        try:
            (jobs.rerun_job if i % 2 == 0 else jobs.cancel_job)(Job.objects.get(pk=job.pk))
            return "rerun" if i % 2 == 0 else "cancel"
        except jobs.Refused as exc:
            return f"refused {exc.status}"
        finally:
            connection.close()

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(act, range(20)))
    assert set(outcomes) <= {"rerun", "cancel", "refused 409"}, outcomes
    # Every accepted re-run queued one task; each later one superseded a canceled, never-started
    # run (its task finds another task's id on the job and does nothing).
    assert len(queued) == outcomes.count("rerun") >= 1
    job.refresh_from_db()
    owners = [task_id for _, task_id in queued]
    assert job.task_id in ("", owners[-1])
    claimable = [t for t in owners if Job.objects.filter(pk=job.pk, task_id=t).exists()]
    assert len(claimable) <= 1


def test_one_email_per_run_however_often_the_task_is_delivered(
    user, tmp_path, settings, mailoutbox, queued
):
    job = make_job(user, tmp_path, settings, status="done", finished_at=timezone.now())
    assert notifications.send_job_notification(str(job.pk))
    assert not notifications.send_job_notification(str(job.pk))  # a second delivery
    assert len(mailoutbox) == 1
    assert mailoutbox[0].extra_headers["Message-ID"].startswith(f"<job-{job.pk}-")
    # A new run gets its own email; a sender that died holding the claim is waited for.
    jobs.rerun_job(job)
    Job.objects.filter(pk=job.pk).update(
        status="done",
        task_id="",
        finished_at=timezone.now(),
        notification_claimed_at=timezone.now(),
    )
    with pytest.raises(notifications.NotificationBusy):
        notifications.send_job_notification(str(job.pk))
    expired = timezone.now() - notifications.CLAIM_LEASE - timedelta(seconds=1)
    Job.objects.filter(pk=job.pk).update(notification_claimed_at=expired)
    assert notifications.send_job_notification(str(job.pk))
    assert len(mailoutbox) == 2


def upload(client: APIClient, seconds: float = 1):
    """A WAV tone of `seconds` (0.19 MB a second)."""
    data = io.BytesIO()
    with tempfile.TemporaryDirectory() as scratch:
        data.write(signals.write(Path(scratch) / "a.wav", signals.tone(seconds)).read_bytes())
    data.seek(0)
    data.name = "a.wav"
    return client.post("/api/jobs/", {"file": data, "preset": "podcast"}, format="multipart")


def test_active_job_limit_and_storage_quota(tmp_path, settings, queued):
    settings.MEDIA_ROOT = tmp_path
    settings.AUDIO_MAX_ACTIVE_JOBS = 2
    settings.AUDIO_USER_QUOTA_MB = 1
    client = APIClient()
    client.force_authenticate(owner := make_user())
    assert [upload(client).status_code for _ in range(2)] == [202, 202]  # queued (not processed)
    third = upload(client)
    assert third.status_code == 429 and "2 jobs queued or processing" in third.json()["detail"]
    # The limit is per user.
    other = APIClient()
    other.force_authenticate(make_user("other"))
    assert upload(other).status_code == 202
    # Storage: 2 x 0.19 MB kept; 0.77 MB more would pass the 1 MB quota.
    Job.objects.owned_by(owner).update(status="done")
    too_big = upload(client, seconds=4)
    assert too_big.status_code == 413 and "1 MB quota" in too_big.json()["detail"]
    assert Job.objects.owned_by(owner).count() == 2
    assert len(list(tmp_path.glob("jobs/*"))) == 3  # nothing stored for the refused uploads
    assert len(queued) == 3


def test_concurrent_uploads_cannot_pass_the_active_limit_together(tmp_path, settings, queued):
    settings.MEDIA_ROOT = tmp_path
    settings.AUDIO_MAX_ACTIVE_JOBS = 3
    owner = make_user()

    def one(_: int) -> int:
        client = APIClient()
        client.force_authenticate(owner)
        try:
            return upload(client).status_code
        finally:
            connection.close()

    with ThreadPoolExecutor(10) as pool:
        codes = sorted(pool.map(one, range(10)))
    assert codes == [202] * 3 + [429] * 7
    assert Job.objects.owned_by(owner).count() == 3


def test_cancel_and_rerun_are_throttled(user, tmp_path, settings, monkeypatch, queued):
    monkeypatch.setattr(JobActionThrottle, "THROTTLE_RATES", {"job_actions": "3/minute"})
    job = make_job(user, tmp_path, settings, status="done", finished_at=timezone.now())
    client = APIClient()
    client.force_authenticate(user)
    codes = [
        client.post(f"/api/jobs/{job.pk}/{action}/").status_code
        for action in ("rerun", "cancel", "rerun", "cancel")
    ]
    assert codes == [202, 200, 202, 429]


def test_job_changes_reach_only_the_owners_channel(user, tmp_path, settings, queued):
    client = redis.Redis.from_url(django_settings.CACHE_URL, decode_responses=True)
    pubsub = client.pubsub()
    stranger = make_user("stranger")
    pubsub.subscribe(events.channel(user.pk), events.channel(stranger.pk))
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    job = make_job(user, tmp_path, settings, status="queued", task_id="t")
    jobs.cancel_job(job)
    message = pubsub.get_message(timeout=2)
    assert message["channel"] == events.channel(user.pk)
    assert '"status": "canceled"' in message["data"] and str(job.pk) in message["data"]
    jobs.delete_job(job)
    deleted = pubsub.get_message(timeout=2)
    assert '"deleted": true' in deleted["data"]
    assert pubsub.get_message(timeout=0.5) is None  # nothing for the stranger
    pubsub.close()


def test_an_address_changed_since_verification_needs_verifying_again(tmp_path, settings):
    from accounts import services as accounts

    user = make_user("mover")
    assert accounts.is_verified(user)
    user.email = "elsewhere@example.com"
    user.save()
    assert not accounts.is_verified(user)
    client = APIClient()
    client.force_authenticate(user)
    assert upload(client).status_code == 403

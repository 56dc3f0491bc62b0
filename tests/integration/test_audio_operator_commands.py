"""The operator's management commands (requeue_stuck_jobs, purge_jobs, resend_notifications,
stats), run for real with call_command on the test stack's PostgreSQL, broker (Redis) and the
test run's SMTP sink."""

import json
import os
import subprocess
import sys
import uuid
from datetime import timedelta
from io import StringIO

import kombu
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from audio.models import Job, Rendition
from audio.services import notifications
from core.celery import app as celery_app
from tests.factories import make_job, make_user, waiting_in_broker
from tests.stack_env import REPO_DIR

pytestmark = pytest.mark.django_db(transaction=True)

CLOSED_PORT_URL = "redis://127.0.0.1:1/0"  # nothing listens there


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def fails(command: str, *args: str) -> tuple[int, str, str]:
    """Runs a command that must fail: its exit code, the error, and what it printed."""
    out = StringIO()
    with pytest.raises(CommandError) as error:
        call_command(command, *args, stdout=out, stderr=StringIO())
    return error.value.returncode, str(error.value), out.getvalue()


def snapshot(*jobs: Job) -> list[tuple]:
    return [
        Job.objects.filter(pk=j.pk).values_list("status", "task_id", "queued_at")[0] for j in jobs
    ]


# --- requeue_stuck_jobs ---------------------------------------------------------------------


@pytest.fixture
def stuck(user, tmp_path, settings, broker_queue):
    """Jobs in every state the sweep distinguishes."""
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

    jobs = {
        "died": job("processing", attempts=1, heartbeat_at=long_ago),
        "died_too_often": job("processing", attempts=2, heartbeat_at=long_ago),
        "alive": job("processing", attempts=1, heartbeat_at=timezone.now()),
        "lost": job("queued"),
        "backlog": job("queued"),  # its task waits in the broker: must not get a second one
    }
    waiting_in_broker(broker_queue, jobs["backlog"].task_id)
    return jobs


def test_requeue_stuck_jobs_requeues_lost_tasks_and_leaves_waiting_ones(stuck, queued) -> None:
    old_task = stuck["died"].task_id
    output = run("requeue_stuck_jobs")
    for job in stuck.values():
        job.refresh_from_db()
    assert {job_id for job_id, _ in queued} == {str(stuck["died"].pk), str(stuck["lost"].pk)}
    assert len(queued) == 2, "a job got a second task"
    assert stuck["died"].status == "queued" and stuck["died"].task_id != old_task
    assert dict(queued)[str(stuck["died"].pk)] == stuck["died"].task_id  # the new task owns it
    assert stuck["died_too_often"].status == "failed"
    assert stuck["alive"].status == "processing" and stuck["backlog"].status == "queued"
    assert "Requeued 2, failed 1, left to their task 1" in output


def test_requeue_stuck_jobs_dry_run_changes_nothing(stuck, queued) -> None:
    before = snapshot(*stuck.values())
    output = run("requeue_stuck_jobs", "--dry-run")
    assert snapshot(*stuck.values()) == before and queued == []
    assert f"would requeue {stuck['died'].pk}" in output
    assert f"would requeue {stuck['lost'].pk}" in output
    assert f"would fail    {stuck['died_too_often'].pk}" in output
    assert f"would leave   {stuck['backlog'].pk}" in output
    assert str(stuck["alive"].pk) not in output
    assert "2 to requeue, 1 to fail, 1 to leave" in output


def test_requeue_stuck_jobs_user_and_older_than_filters(
    tmp_path, settings, queued, broker_queue
) -> None:
    settings.AUDIO_QUEUED_GRACE_S = 600
    settings.AUDIO_HEARTBEAT_TIMEOUT_S = 30
    olga, ivan = make_user("olga"), make_user("ivan")
    minutes_ago = timezone.now() - timedelta(minutes=2)
    olgas = make_job(
        olga, tmp_path, settings, status="queued", task_id="t-olga", queued_at=minutes_ago
    )
    ivans = make_job(
        ivan, tmp_path, settings, status="queued", task_id="t-ivan", queued_at=minutes_ago
    )
    beating = make_job(
        olga,
        tmp_path,
        settings,
        status="processing",
        task_id="t-beat",
        queued_at=minutes_ago,
        heartbeat_at=timezone.now(),
    )

    assert "No stuck jobs" in run("requeue_stuck_jobs")  # within the 10-minute grace
    assert "No stuck jobs" in run("requeue_stuck_jobs", "--older-than=300")
    # Sooner than the grace, for one user: their queued job only; a live heartbeat stays.
    run("requeue_stuck_jobs", "--older-than=60", f"--user={olga.username}")
    assert [job_id for job_id, _ in queued] == [str(olgas.pk)]
    # Even with 0, a processing job whose heartbeat is fresh stays with its task.
    run("requeue_stuck_jobs", "--older-than=0", f"--user={olga.email}")
    beating.refresh_from_db()
    assert beating.status == "processing" and beating.task_id == "t-beat"
    assert {job_id for job_id, _ in queued} == {str(olgas.pk)}
    ivans.refresh_from_db()
    assert ivans.status == "queued" and ivans.task_id == "t-ivan"


def test_requeue_stuck_jobs_bad_input_and_unreachable_broker(stuck, queued, settings) -> None:
    before = snapshot(*stuck.values())
    code, error, _ = fails("requeue_stuck_jobs", "--user=nobody-such")
    assert code == 2 and "no user 'nobody-such'" in error
    code, error, _ = fails("requeue_stuck_jobs", "--older-than=-5")
    assert code == 2 and "--older-than must be 0 or more" in error
    settings.CELERY_BROKER_URL = CLOSED_PORT_URL
    code, error, _ = fails("requeue_stuck_jobs")
    assert code == 1 and "broker could not be read" in error
    assert snapshot(*stuck.values()) == before and queued == []


# --- purge_jobs -----------------------------------------------------------------------------


def test_purge_jobs_deletes_the_files_of_expired_jobs_and_keeps_the_rows(
    user, tmp_path, settings
) -> None:
    settings.AUDIO_RETENTION_DAYS = 7
    old = make_job(
        user, tmp_path, settings, status="done", finished_at=timezone.now() - timedelta(days=8)
    )
    (old.directory / "r.mp3").write_bytes(b"mp3")
    Rendition.objects.create(job=old, format="mp3", content_type="audio/mpeg", file_name="r.mp3")
    recent = make_job(
        user, tmp_path, settings, status="done", finished_at=timezone.now() - timedelta(days=1)
    )
    active = make_job(user, tmp_path, settings, status="processing")

    dry = run("purge_jobs", "--dry-run")
    assert f"would purge the files of {old.pk}" in dry and str(recent.pk) not in dry
    assert old.directory.exists() and old.renditions.exists()

    assert "Purged the files of 1 jobs" in run("purge_jobs")
    old.refresh_from_db()
    assert old.files_purged_at and not old.directory.exists() and not old.renditions.exists()
    assert recent.directory.exists() and active.directory.exists()
    assert "No jobs to purge" in run("purge_jobs")  # idempotent


def test_purge_jobs_by_user_status_and_age(tmp_path, settings) -> None:
    olga, ivan = make_user("olga"), make_user("ivan")
    hour_ago = timezone.now() - timedelta(hours=1)

    def job(owner, status: str) -> Job:
        return make_job(owner, tmp_path, settings, status=status, finished_at=hour_ago)

    olgas_failed, olgas_done, olgas_canceled = (
        job(olga, s) for s in ("failed", "done", "canceled")
    )
    ivans_failed = job(ivan, "failed")
    output = run(
        "purge_jobs", "--older-than-days=0", f"--user={olga.username}", "--status=failed,canceled"
    )
    assert "Purged the files of 2 jobs" in output
    for j in (olgas_failed, olgas_done, olgas_canceled, ivans_failed):
        j.refresh_from_db()
    assert olgas_failed.files_purged_at and olgas_canceled.files_purged_at
    assert not olgas_failed.directory.exists() and not olgas_canceled.directory.exists()
    assert olgas_done.files_purged_at is None and olgas_done.directory.exists()
    assert ivans_failed.files_purged_at is None and ivans_failed.directory.exists()


def test_purge_jobs_delete_removes_rows_and_files(user, tmp_path, settings) -> None:
    day_ago = timezone.now() - timedelta(days=1)
    done = make_job(user, tmp_path, settings, status="done", finished_at=day_ago)
    purged = make_job(
        user, tmp_path, settings, status="done", finished_at=day_ago, files_purged_at=day_ago
    )
    queued_job = make_job(user, tmp_path, settings, status="queued")
    output = run("purge_jobs", "--delete", "--no-input", "--older-than-days=0")
    assert "Deleted 2 jobs" in output
    assert not Job.objects.filter(pk__in=[done.pk, purged.pk]).exists()
    assert not done.directory.exists()
    assert Job.objects.filter(pk=queued_job.pk).exists() and queued_job.directory.exists()


def test_purge_jobs_refuses_active_statuses_and_bad_input(user, tmp_path, settings) -> None:
    job = make_job(
        user, tmp_path, settings, status="done", finished_at=timezone.now() - timedelta(days=400)
    )
    for args, message in [
        (("--status=processing",), "only finished jobs can be purged"),
        (("--status=done,queued",), "--status queued"),
        (("--older-than-days=-1",), "--older-than-days must be 0 or more"),
        (("--user=nobody-such",), "no user"),
    ]:
        code, error, _ = fails("purge_jobs", *args)
        assert code == 2 and message in error, (args, error)
    job.refresh_from_db()
    assert job.files_purged_at is None and job.directory.exists()


def test_exit_codes_from_the_command_line() -> None:
    """What a shell sees: argparse's and CommandError's exit codes, the error on stderr."""
    env = dict(os.environ)
    manage = [sys.executable, str(REPO_DIR / "app" / "manage.py")]
    bad = subprocess.run(
        [*manage, "purge_jobs", "--status=queued"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2, bad.stderr
    assert "CommandError: --status queued: only finished jobs can be purged" in bad.stderr
    typo = subprocess.run(
        [*manage, "requeue_stuck_jobs", "--older-than=soon"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert typo.returncode == 2 and "invalid float value: 'soon'" in typo.stderr


# --- resend_notifications -------------------------------------------------------------------


@pytest.fixture
def smtp(settings, smtp_sink):
    """Mail through real SMTP to the test run's sink (EMAIL_URL of the test stack)."""
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    return smtp_sink


def mail_to(sink, address: str) -> list:
    return [m for m in sink.messages if address in m["to"]]


def test_resend_notifications_sends_again_right_after_the_first(user, tmp_path, settings, smtp):
    """The first email's claim and its Message-ID do not swallow a deliberate re-send."""
    job = make_job(user, tmp_path, settings, status="done", finished_at=timezone.now())
    assert notifications.send_job_notification(str(job.pk))  # the first, as the worker sends it
    assert not notifications.send_job_notification(str(job.pk))  # ... once
    output = run("resend_notifications", str(job.pk))
    assert "Sent 1," in output
    first, again = mail_to(smtp, user.email)
    assert "is ready" in again["subject"] and again["subject"] == first["subject"]
    assert again["Message-ID"] != first["Message-ID"]
    assert again["In-Reply-To"] == first["Message-ID"]
    run("resend_notifications", str(job.pk))  # and once more: each run sends one
    assert len(mail_to(smtp, user.email)) == 3
    job.refresh_from_db()
    assert job.notified_at is not None


def test_resend_notifications_by_user_and_window(tmp_path, settings, smtp) -> None:
    olga, ivan = make_user("olga"), make_user("ivan")
    now = timezone.now()

    def job(owner, status: str, finished_ago: timedelta) -> Job:
        return make_job(
            owner,
            tmp_path,
            settings,
            status=status,
            finished_at=now - finished_ago,
            notified_at=now - finished_ago,
        )

    recent_failed = job(olga, "failed", timedelta(hours=2))
    job(olga, "done", timedelta(days=3))  # outside the window
    job(olga, "canceled", timedelta(hours=1))  # gets no email at all
    job(ivan, "done", timedelta(hours=2))  # someone else's
    dry = run("resend_notifications", f"--user={olga.username}", "--since=24h", "--dry-run")
    assert f"would email {olga.email} about {recent_failed.pk}" in dry
    assert "Dry run, nothing sent: 1 jobs" in dry and mail_to(smtp, olga.email) == []

    output = run("resend_notifications", f"--user={olga.username}", "--since=24h")
    assert "Sent 1," in output
    (message,) = mail_to(smtp, olga.email)
    assert "could not be processed" in message["subject"]
    assert mail_to(smtp, ivan.email) == []
    until = (now - timedelta(days=1)).isoformat()
    run("resend_notifications", f"--user={olga.email}", f"--until={until}")
    assert "is ready" in mail_to(smtp, olga.email)[1]["subject"]


def test_resend_notifications_skips_a_send_in_progress(user, tmp_path, settings, smtp) -> None:
    # The worker is sending the first email right now.
    job = make_job(
        user,
        tmp_path,
        settings,
        status="done",
        finished_at=timezone.now(),
        notification_claimed_at=timezone.now(),
    )
    code, error, output = fails("resend_notifications", str(job.pk))
    assert code == 1 and "1 emails could not be sent" in error and "busy 1" in output
    assert mail_to(smtp, user.email) == []


def test_resend_notifications_reports_a_mail_server_failure(user, tmp_path, settings, smtp):
    job = make_job(user, tmp_path, settings, status="done", finished_at=timezone.now())
    settings.EMAIL_PORT = 1  # nothing listens there
    settings.EMAIL_TIMEOUT = 5
    code, _error, output = fails("resend_notifications", str(job.pk))
    assert code == 1 and "failed 1" in output
    settings.EMAIL_PORT = int(os.environ["EMAIL_URL"].rsplit(":", 1)[1])
    assert "Sent 1," in run("resend_notifications", str(job.pk))  # the failed try left no claim
    assert len(mail_to(smtp, user.email)) == 1


def test_resend_notifications_bad_input_sends_nothing(user, tmp_path, settings, smtp) -> None:
    done = make_job(user, tmp_path, settings, status="done", finished_at=timezone.now())
    canceled = make_job(user, tmp_path, settings, status="canceled", finished_at=timezone.now())
    missing = uuid.uuid4()
    for args, message in [
        ((), "choose the jobs"),
        (("not-a-uuid",), "'not-a-uuid' is not a job id"),
        ((str(done.pk), str(canceled.pk), str(missing)), f"{canceled.pk}: canceled"),
        ((str(done.pk), str(missing)), f"{missing}: no such job"),
        (("--since=yesterday-ish",), "--since: 'yesterday-ish' is neither"),
        (("--since=1h", "--until=2h"), "--since must be before --until"),
        (("--user=nobody-such",), "no user"),
    ]:
        code, error, _ = fails("resend_notifications", *args)
        assert code == 2 and message in error, (args, error)
    assert mail_to(smtp, user.email) == []


# --- stats ----------------------------------------------------------------------------------


def stats_json(*args: str) -> dict:
    return json.loads(run("stats", "--json", *args))


def test_stats_json_counts_jobs_work_users_storage_and_queue(
    tmp_path, settings, broker_queue
) -> None:
    before = stats_json()
    assert before["queue"] == {"waiting": 0, "unacknowledged": before["queue"]["unacknowledged"]}
    user = make_user("stats")
    now = timezone.now()

    def job(status: str, ago: timedelta, took_s: float = 0, audio_s: float | None = None, **kw):
        metadata = {"duration_s": audio_s} if audio_s is not None else {}
        j = make_job(
            user,
            tmp_path,
            settings,
            status=status,
            source_metadata=metadata,
            started_at=now - ago - timedelta(seconds=took_s),
            finished_at=now - ago,
            **kw,
        )
        Job.objects.filter(pk=j.pk).update(created_at=now - ago - timedelta(seconds=took_s))
        return j

    today = job("done", timedelta(hours=1), took_s=30, audio_s=120.5, source_size=1000)
    Rendition.objects.create(
        job=today, format="mp3", content_type="audio/mpeg", file_name="r.mp3", size=500
    )
    job("done", timedelta(days=3), took_s=60, audio_s=200, source_size=2000)
    job("failed", timedelta(hours=2), took_s=5, source_size=10)
    job(
        "done",
        timedelta(days=40),
        took_s=7,
        audio_s=9,
        source_size=4000,
        files_purged_at=now - timedelta(days=10),
    )
    make_job(user, tmp_path, settings, status="queued", source_size=100)
    for _ in range(3):
        waiting_in_broker(broker_queue, str(uuid.uuid4()))

    after = stats_json()

    def delta(*path: str) -> float:
        a, b = after, before
        for key in path:
            a, b = a[key], b[key]
        return round(a - b, 3)

    assert delta("jobs", "total", "done") == 3 and delta("jobs", "total", "failed") == 1
    assert delta("jobs", "total", "queued") == 1
    assert delta("jobs", "created_last_24h", "done") == 1
    assert delta("jobs", "created_last_24h", "queued") == 1
    assert delta("work", "last_24h", "runs") == 2 and delta("work", "last_24h", "done") == 1
    assert delta("work", "last_24h", "processing_s") == 35
    assert delta("work", "last_24h", "audio_s") == 120.5
    assert delta("work", "total", "runs") == 4 and delta("work", "total", "processing_s") == 102
    assert delta("work", "total", "audio_s") == 329.5
    assert delta("users", "total") == 1 and delta("users", "with_jobs_since") == 1
    assert delta("storage_recorded_bytes", "sources") == 1000 + 2000 + 10 + 100
    assert delta("storage_recorded_bytes", "renditions") == 500
    assert after["queue"]["waiting"] == 3 and after["errors"] == []

    human = run("stats")
    assert "Queue: 3 tasks waiting" in human and "Jobs" in human and "processing" in human


def test_stats_tells_waiting_from_delivered_tasks(broker_queue) -> None:
    for _ in range(3):
        waiting_in_broker(broker_queue, str(uuid.uuid4()))
    before = stats_json()["queue"]
    with celery_app.connection_for_read() as connection, connection.channel() as channel:
        # As a worker receives a task: out of the queue, into kombu's unacknowledged set.
        message = kombu.Queue(broker_queue, channel=channel).get(no_ack=False)
        try:
            during = stats_json()["queue"]
        finally:
            message.ack()
    assert before["waiting"] == 3 and during["waiting"] == 2
    assert during["unacknowledged"] == before["unacknowledged"] + 1


def test_stats_measures_the_disk(user, tmp_path, settings) -> None:
    settings.MEDIA_ROOT = tmp_path
    a = make_job(user, tmp_path, settings, status="done")  # a 1-byte source
    (a.directory / "waveform.png").write_bytes(b"p" * 999)
    b = make_job(user, tmp_path, settings, status="done")
    (b.directory / "run-leftover").mkdir()
    (b.directory / "run-leftover" / "part").write_bytes(b"q" * 4000)
    disk = stats_json("--disk")["storage_on_disk"]
    assert disk == {"job_directories": 2, "bytes": 1 + 999 + 1 + 4000}


def test_stats_without_the_broker_still_reports_and_exits_1(settings) -> None:
    settings.CELERY_BROKER_URL = CLOSED_PORT_URL
    code, error, output = fails("stats", "--json")
    report = json.loads(output)
    assert code == 1 and "broker" in error
    assert report["queue"] is None and report["errors"] and "done" in report["jobs"]["total"]

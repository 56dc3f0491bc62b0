"""Email: one message per finished run, and the daily summary for staff."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from ..models import Job, JobQuerySet
from ..tasks import send_job_notification as send_job_notification_task

logger = logging.getLogger(__name__)
#: A sender that has claimed a notification this long ago without marking it sent has died.
CLAIM_LEASE = timedelta(seconds=60)
#: The statuses a "finished" email is sent for (a canceled job gets none).
NOTIFIED_STATUSES = (Job.Status.DONE, Job.Status.FAILED)


class NotificationBusy(Exception):
    """Another delivery of the task holds the claim; try again in `retry_in` seconds."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"another sender holds the claim; retry in {retry_in:.0f}s")
        self.retry_in = retry_in


def notify_finished(job_id: uuid.UUID | str) -> None:
    transaction.on_commit(lambda: send_job_notification_task.delay(str(job_id)), robust=True)


def send_job_notification(job_id: str) -> bool:
    """Email the owner that the run finished or failed, once: the sender claims the message with
    a lease, sends, then marks it sent. A sender killed before marking leaves the lease to expire
    and a redelivery sends it (at least once; the Message-ID lets clients fold a duplicate)."""
    now = timezone.now()
    pending = Job.objects.filter(pk=job_id, notified_at__isnull=True, status__in=NOTIFIED_STATUSES)
    claimed = pending.filter(
        Q(notification_claimed_at__isnull=True) | Q(notification_claimed_at__lt=now - CLAIM_LEASE)
    ).update(notification_claimed_at=now)
    if not claimed:
        held = pending.values_list("notification_claimed_at", flat=True).first()
        if held is not None:
            raise NotificationBusy((held + CLAIM_LEASE - now).total_seconds() + 1)
        return False  # sent already, or the job was re-run or deleted since
    job = Job.objects.select_related("owner").get(pk=job_id)
    # Our claim: a re-run since then reset it, and its own sender must not be overruled.
    ours = Job.objects.filter(pk=job_id, notification_claimed_at=now)
    if not job.owner.email:
        ours.update(notified_at=now)
        return False
    try:
        _message(job).send()
    except Exception:
        ours.update(notification_claimed_at=None)  # the retry sends it
        raise
    ours.update(notified_at=timezone.now())
    logger.info("job %s: notification sent to user %s", job_id, job.owner_id)
    return True


#: What `resend_job_notification` did with a job.
SENT, BUSY, NO_EMAIL, NOT_FINISHED = "sent", "busy", "no_email", "not_finished"


def notifiable_jobs(
    *,
    job_ids: Iterable[uuid.UUID | str] = (),
    owner: User | None = None,
    finished_since: datetime | None = None,
    finished_until: datetime | None = None,
) -> JobQuerySet:
    """Selector: done or failed jobs (those a "finished" email is about) matching every filter
    given: among `job_ids`, of `owner`, finished in [`finished_since`, `finished_until`)."""
    jobs = Job.objects.filter(status__in=NOTIFIED_STATUSES)
    if job_ids:
        jobs = jobs.filter(pk__in=list(job_ids))
    if owner is not None:
        jobs = jobs.owned_by(owner)
    if finished_since is not None:
        jobs = jobs.filter(finished_at__gte=finished_since)
    if finished_until is not None:
        jobs = jobs.filter(finished_at__lt=finished_until)
    return jobs.order_by("finished_at", "pk")


def resend_job_notification(job_id: uuid.UUID | str) -> str:
    """Send the "finished" email of a done or failed job again, on purpose, whether or not it
    was sent before: SENT, or BUSY (a sender holds the claim right now: the first email is
    being sent, or another re-send), NO_EMAIL (the owner has none), NOT_FINISHED (the job is
    active, canceled or gone). It takes the same claim as `send_job_notification`, so it never
    overlaps a send in progress, and it marks the job notified, so a pending first send that
    comes later sends nothing more. The message gets a Message-ID of its own (clients fold
    messages with the same Message-ID, and a re-send must not disappear into the first) and
    refers to the original one (In-Reply-To, References), so clients thread the two."""
    now = timezone.now()
    job_rows = Job.objects.filter(pk=job_id, status__in=NOTIFIED_STATUSES)
    # Free: never claimed, a dead sender's lease, or the claim of a send that has finished.
    claimed = job_rows.filter(
        Q(notification_claimed_at__isnull=True)
        | Q(notification_claimed_at__lt=now - CLAIM_LEASE)
        | Q(notified_at__gte=F("notification_claimed_at"))
    ).update(notification_claimed_at=now)
    if not claimed:
        return BUSY if job_rows.exists() else NOT_FINISHED
    job = Job.objects.select_related("owner").get(pk=job_id)
    ours = Job.objects.filter(pk=job_id, notification_claimed_at=now)
    if not job.owner.email:
        ours.update(notification_claimed_at=None)
        return NO_EMAIL
    try:
        _message(job, resend=True).send()
    except Exception:
        ours.update(notification_claimed_at=None)
        raise
    ours.update(notified_at=timezone.now())
    logger.info("job %s: notification re-sent to user %s", job_id, job.owner_id)
    return SENT


def _message(job: Job, resend: bool = False) -> EmailMultiAlternatives:
    context = {"job": job, "renditions": list(job.renditions.all()), "site_url": settings.SITE_URL}
    outcome = "is ready" if job.status == Job.Status.DONE else "could not be processed"
    finished = int(job.finished_at.timestamp()) if job.finished_at else 0
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    message_id = original_id = f"<job-{job.pk}-{finished}@{domain}>"
    headers = {}
    if resend:
        message_id = f"<job-{job.pk}-{finished}-resent-{uuid.uuid4().hex[:12]}@{domain}>"
        headers = {"In-Reply-To": original_id, "References": original_id}
    message = EmailMultiAlternatives(
        subject=f"Your audio {outcome}: {job.original_name}"[:200],
        body=render_to_string("audio/email/job_finished.txt", context),
        to=[job.owner.email],
        headers={"Message-ID": message_id, **headers},
    )
    message.attach_alternative(
        render_to_string("audio/email/job_finished.html", context), "text/html"
    )
    return message


def send_daily_summary() -> int:
    """Yesterday's jobs, by status, to the admins (users with is_staff and an email)."""
    since = timezone.now() - timedelta(days=1)
    counts = {status: 0 for status in Job.Status.values}
    for row in Job.objects.filter(created_at__gte=since).values("status"):
        counts[row["status"]] += 1
    failures = list(
        Job.objects.filter(status=Job.Status.FAILED, finished_at__gte=since).values_list(
            "id", "error"
        )[:50]
    )
    recipients = list(
        get_user_model()
        .objects.filter(is_staff=True, is_active=True)
        .exclude(email="")
        .values_list("email", flat=True)
    )
    if not recipients:
        return 0
    context = {"counts": counts, "failures": failures, "since": since}
    message = EmailMultiAlternatives(
        subject=f"Audio jobs, last 24 h: {sum(counts.values())} created, {counts['failed']} failed",
        body=render_to_string("audio/email/daily_summary.txt", context),
        to=recipients,
    )
    message.attach_alternative(
        render_to_string("audio/email/daily_summary.html", context), "text/html"
    )
    message.send()
    return len(recipients)

"""Email: one message per finished run, and the daily summary for staff."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from ..models import Job
from ..tasks import send_job_notification as send_job_notification_task

logger = logging.getLogger(__name__)
#: A sender that has claimed a notification this long ago without marking it sent has died.
CLAIM_LEASE = timedelta(seconds=60)


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
    pending = Job.objects.filter(
        pk=job_id, notified_at__isnull=True, status__in=[Job.Status.DONE, Job.Status.FAILED]
    )
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


def _message(job: Job) -> EmailMultiAlternatives:
    context = {"job": job, "renditions": list(job.renditions.all()), "site_url": settings.SITE_URL}
    outcome = "is ready" if job.status == Job.Status.DONE else "could not be processed"
    finished = int(job.finished_at.timestamp()) if job.finished_at else 0
    domain = settings.DEFAULT_FROM_EMAIL.rpartition("@")[2] or "localhost"
    message = EmailMultiAlternatives(
        subject=f"Your audio {outcome}: {job.original_name}"[:200],
        body=render_to_string("audio/email/job_finished.txt", context),
        to=[job.owner.email],
        headers={"Message-ID": f"<job-{job.pk}-{finished}@{domain}>"},
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
        get_user_model().objects.filter(is_staff=True, is_active=True)
        .exclude(email="").values_list("email", flat=True)
    )  # fmt: skip
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

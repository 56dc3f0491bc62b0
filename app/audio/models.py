import uuid
from pathlib import Path

from django.conf import settings
from django.db import models
from django.utils import timezone

# The waveform files each job gets, and how they are served.
WAVEFORM_CONTENT_TYPES = {
    "json": "application/json",
    "dat": "application/octet-stream",
    "png": "image/png",
}


class JobQuerySet(models.QuerySet["Job"]):
    def owned_by(self, user: object) -> "JobQuerySet":
        """The one access rule: a user sees only their own jobs (anyone else's is a 404)."""
        return self.filter(owner=user)

    def active(self) -> "JobQuerySet":
        return self.filter(status__in=Job.ACTIVE)

    def transition(self, **fields: object) -> int:
        """update() that stamps updated_at too (update() never touches auto_now fields)."""
        return self.update(updated_at=timezone.now(), **fields)


class Job(models.Model):
    """One upload and its processing. The state machine (README, "Job state machine"):

    queued(task T) -> processing(T, heartbeat) -> done | failed | canceled; a finished job may be
    re-run (queued with a new task). Only the task named in `task_id` may claim or write a run.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        PROCESSING = "processing"
        DONE = "done"
        FAILED = "failed"
        CANCELED = "canceled"

    FINISHED = (Status.DONE, Status.FAILED, Status.CANCELED)
    ACTIVE = (Status.QUEUED, Status.PROCESSING)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="audio_jobs"
    )
    preset = models.CharField(max_length=32)
    status = models.CharField(max_length=16, choices=Status, default=Status.QUEUED, db_index=True)
    phase = models.CharField(max_length=32, blank=True)
    progress = models.PositiveSmallIntegerField(default=0)
    error = models.TextField(blank=True)
    # Shown to its owner only; never used in a path.
    original_name = models.CharField(max_length=255)
    source_size = models.BigIntegerField(default=0)
    source_metadata = models.JSONField(default=dict, blank=True)
    loudness_before = models.JSONField(null=True, blank=True)
    has_waveform = models.BooleanField(default=False)
    attempts = models.PositiveSmallIntegerField(default=0)
    # The Celery task that owns the current run ("" once the run has ended).
    task_id = models.CharField(max_length=64, blank=True, default="")
    queued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    notified_at = models.DateTimeField(null=True, blank=True)
    # A lease: the notification task sending the email (a crashed sender's lease expires).
    notification_claimed_at = models.DateTimeField(null=True, blank=True)
    files_purged_at = models.DateTimeField(null=True, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["owner", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.original_name} ({self.preset}, {self.status})"

    @property
    def directory(self) -> Path:
        """Server-generated: MEDIA_ROOT/jobs/<uuid>/ (no user input in any path)."""
        return Path(settings.MEDIA_ROOT) / "jobs" / str(self.id)

    @property
    def source_path(self) -> Path:
        return self.directory / "source"

    def waveform_path(self, kind: str) -> Path:
        return self.directory / f"waveform.{kind}"

    def run_directory(self, task_id: str) -> Path:
        """A run's private working directory; its files move into place only when it commits."""
        return self.directory / f"run-{task_id}"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED


class Rendition(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="renditions")
    format = models.CharField(max_length=16)
    content_type = models.CharField(max_length=64)
    file_name = models.CharField(max_length=64)
    size = models.BigIntegerField(default=0)
    loudness = models.JSONField(default=dict)
    gain_db = models.FloatField(default=0.0)
    within_target = models.BooleanField(default=False)
    note = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "format"], name="one_rendition_per_format")
        ]
        ordering = ["format"]

    def __str__(self) -> str:
        return f"{self.job_id} {self.format}"

    @property
    def path(self) -> Path:
        return self.job.directory / self.file_name

"""The Celery application. Settings come from Django settings (CELERY_* names)."""

import os
import resource

from celery import Celery
from celery.signals import worker_process_init

from health.celery_steps import WorkerHeartbeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("core")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["worker"].add(WorkerHeartbeat)


@worker_process_init.connect
def limit_worker_memory(**kwargs: object) -> None:
    """Each worker process (decoding uploads in PyAV) gets AUDIO_WORKER_MEMORY_MB of address
    space: a file that would take more fails its job with a MemoryError, not the machine."""
    from django.conf import settings

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (settings.AUDIO_WORKER_MEMORY_MB * 2**20, hard))

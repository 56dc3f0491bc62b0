"""The Celery application. Settings come from Django settings (CELERY_* names)."""

import os
import resource

from celery import Celery, Task
from celery.signals import (
    before_task_publish,
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
)

from core import log_context
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


@worker_init.connect
def serve_metrics(**kwargs: object) -> None:
    """The worker's Prometheus endpoint, in its main process (core.metrics)."""
    from django.conf import settings

    from core.metrics import serve_worker_metrics

    if settings.WORKER_METRICS_PORT:
        serve_worker_metrics(settings.WORKER_METRICS_PORT, settings.WORKER_METRICS_BIND)


@before_task_publish.connect
def send_request_id(headers: dict, **kwargs: object) -> None:
    """A task enqueued while serving a request carries that request's id."""
    if rid := log_context.request_id.get():
        headers.setdefault(log_context.TASK_HEADER, rid)


@task_prerun.connect
def bind_task(task_id: str, task: Task, **kwargs: object) -> None:
    """The task's log lines carry its id and the id of the request that enqueued it."""
    log_context.task_id.set(task_id)
    log_context.request_id.set(task.request.get(log_context.TASK_HEADER) or "")


@task_postrun.connect
def unbind_task(**kwargs: object) -> None:
    log_context.task_id.set("")
    log_context.request_id.set("")

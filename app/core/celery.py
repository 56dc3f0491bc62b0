"""The Celery application. Settings come from Django settings (CELERY_* names)."""

import os

from celery import Celery

from health.celery_steps import WorkerHeartbeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("core")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
app.steps["worker"].add(WorkerHeartbeat)

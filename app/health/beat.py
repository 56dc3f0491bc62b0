"""Beat scheduler that records a heartbeat on every tick of its loop."""

from typing import Any

from django_celery_beat.schedulers import DatabaseScheduler

from . import heartbeat


class HeartbeatDatabaseScheduler(DatabaseScheduler):
    """django-celery-beat's scheduler (schedules editable in the admin), plus a heartbeat."""

    def tick(self, *args: Any, **kwargs: Any) -> float:
        heartbeat.touch("beat")
        return super().tick(*args, **kwargs)

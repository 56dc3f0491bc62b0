"""Worker bootstep that keeps the worker's heartbeat file fresh."""

from typing import Any

from celery import bootsteps

from . import heartbeat

INTERVAL_SECONDS = 5.0


class WorkerHeartbeat(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Timer"}  # type: ignore[assignment]  # any iterable

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref = None

    def start(self, parent: Any) -> None:
        heartbeat.touch("worker")
        self.tref = parent.timer.call_repeatedly(INTERVAL_SECONDS, heartbeat.touch, ("worker",))

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        heartbeat.clear("worker")

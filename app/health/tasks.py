import time

from celery import shared_task


@shared_task(name="health.ping", ignore_result=False)
def ping(value: str) -> str:
    """Echo: proves a round-trip through the broker, a worker and the result backend."""
    return value


@shared_task(name="health.clock", ignore_result=False)
def clock() -> float:
    """The time a worker started this task (benchmarks/task_latency.py: enqueue to start)."""
    return time.time()


class DiagnosticError(RuntimeError):
    """Raised on purpose (diagnostics/error): proves errors reach Sentry or the admins' mail."""


@shared_task(name="health.fail")
def fail(reference: str) -> None:
    raise DiagnosticError(f"a task failed on purpose (diagnostics/error, {reference})")

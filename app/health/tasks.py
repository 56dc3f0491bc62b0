from celery import shared_task


@shared_task(name="health.ping", ignore_result=False)
def ping(value: str) -> str:
    """Echo: proves a round-trip through the broker, a worker and the result backend."""
    return value

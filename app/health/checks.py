"""Readiness checks: each dependency answers a real request, within a short deadline."""

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import connections
from kombu import Connection, pools

CHECK_TIMEOUT_SECONDS = 2.0
# Checks run on threads of their own, not the event loop's default executor: under WSGI each
# probe runs in a loop of its own (async_to_sync), and closing that loop would wait for a check
# that is stuck (PgBouncer down: the pool's 10 s) long after the probe timed it out.
CHECK_EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readiness")


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    error: str = ""

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"ok": self.ok, "latency_ms": round(self.latency_ms, 2)}
        if self.error:
            data["error"] = self.error
        return data


def describe(exc: BaseException) -> str:
    """One line, bounded: exception type and message (drivers' messages span lines)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def check_database() -> None:
    """SELECT 1 on the default database (through PgBouncer in this stack)."""
    connection = connections["default"]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            if cursor.fetchone() != (1,):
                raise RuntimeError("SELECT 1 returned an unexpected row")
    finally:
        connection.close()  # return it to the pool; this thread is not reused for requests


def check_cache() -> None:
    key = "health:readyz"
    value = str(time.time_ns())
    cache.set(key, value, timeout=30)
    if cache.get(key) != value:
        raise RuntimeError("cache did not return the value just written")


def check_broker() -> None:
    """A PING on a pooled broker connection (kombu's pools, one per URL): probes every few
    seconds must not open a connection each."""
    url = Connection(settings.CELERY_BROKER_URL, connect_timeout=CHECK_TIMEOUT_SECONDS)
    conn = pools.connections[url].acquire(block=True, timeout=CHECK_TIMEOUT_SECONDS)
    try:
        conn.ensure_connection(max_retries=1, timeout=CHECK_TIMEOUT_SECONDS)
        if hasattr(conn.default_channel, "client"):  # Redis transport: make it answer
            conn.default_channel.client.ping()
    except Exception:
        conn.collect()  # a broken connection is dropped; the next probe gets a new one
        raise
    finally:
        conn.release()


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "cache": check_cache,
    "broker": check_broker,
}


async def run_check(
    name: str, check: Callable[[], None], timeout: float = CHECK_TIMEOUT_SECONDS
) -> CheckResult:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(
            sync_to_async(check, thread_sensitive=False, executor=CHECK_EXECUTOR)(), timeout
        )
    except TimeoutError:
        error = f"timed out after {timeout:.1f}s"
    except Exception as exc:
        error = describe(exc)
    else:
        error = ""
    return CheckResult(name, not error, (time.perf_counter() - started) * 1000, error)


async def run_readiness_checks() -> list[CheckResult]:
    """Run every check concurrently; the slowest bounds the total."""
    return list(
        await asyncio.gather(*(run_check(name, fn) for name, fn in READINESS_CHECKS.items()))
    )

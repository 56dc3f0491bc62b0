import asyncio
import hmac
import ipaddress
import threading
import time
import uuid

from django.conf import settings
from django.db import connection
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .checks import run_readiness_checks
from .tasks import DiagnosticError, fail, ping

TASK_ROUNDTRIP_TIMEOUT_SECONDS = 10.0


@never_cache
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers. No dependency is touched."""
    return JsonResponse({"status": "ok"})


def is_internal(request: HttpRequest) -> bool:
    """The client's address (the proxy's view of it) is in READYZ_DETAIL_FROM."""
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in settings.READYZ_DETAIL_FROM)


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: database (through PgBouncer), cache and broker. Probes from internal
    addresses (orchestrators, operators) get each component's latency and error; anyone else
    only the status, never hosts or error texts."""
    results = await run_readiness_checks()
    ready = all(r.ok for r in results)
    body: dict[str, object] = {"status": "ok" if ready else "unavailable"}
    if is_internal(request):
        body["checks"] = {r.name: r.as_dict() for r in results}
    return JsonResponse(body, status=200 if ready else 503)


def _require_diagnostics_token(request: HttpRequest) -> None:
    """Diagnostics exist only when DIAGNOSTICS_TOKEN is set, and need it in a header."""
    expected = settings.DIAGNOSTICS_TOKEN
    given = request.headers.get("X-Diagnostics-Token", "")
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Http404


@never_cache
@require_GET
def diagnostics_database(request: HttpRequest) -> JsonResponse:
    """A small database-backed endpoint (two queries) used by tests and benchmarks."""
    _require_diagnostics_token(request)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM django_migrations")
        (migrations,) = cursor.fetchone()
        cursor.execute("SELECT now(), current_setting('application_name')")
        now, application_name = cursor.fetchone()
    return JsonResponse(
        {"migrations": migrations, "now": now.isoformat(), "application_name": application_name}
    )


@never_cache
@require_GET
def diagnostics_request(request: HttpRequest) -> JsonResponse:
    """The smallest sync view behind the whole middleware stack: what the web server itself costs
    (benchmarks/web.py), and which thread ran the view (tests of core.asgi)."""
    _require_diagnostics_token(request)
    return JsonResponse({"thread": threading.current_thread().name})


@never_cache
@require_GET
async def diagnostics_task(request: HttpRequest) -> JsonResponse:
    """Round-trip a task through the broker, a worker and the result backend."""
    _require_diagnostics_token(request)
    token = uuid.uuid4().hex
    started = time.perf_counter()
    result = await asyncio.to_thread(ping.delay, token)
    deadline = started + TASK_ROUNDTRIP_TIMEOUT_SECONDS
    while time.perf_counter() < deadline:
        if await asyncio.to_thread(result.ready):
            value = await asyncio.to_thread(result.get, timeout=1)
            elapsed = (time.perf_counter() - started) * 1000
            return JsonResponse(
                {"ok": value == token, "task_id": result.id, "latency_ms": round(elapsed, 1)},
                status=200 if value == token else 500,
            )
        await asyncio.sleep(0.05)
    return JsonResponse({"ok": False, "task_id": result.id, "error": "timed out"}, status=504)


@never_cache
@require_GET
def diagnostics_error(request: HttpRequest) -> JsonResponse:
    """An unhandled error on purpose, in this view or (?in=task) in a task: what an operator
    runs to see that error reporting works (README, "Errors")."""
    _require_diagnostics_token(request)
    reference = uuid.uuid4().hex
    if request.GET.get("in") == "task":
        result = fail.delay(reference)
        return JsonResponse({"task_id": result.id, "reference": reference}, status=202)
    raise DiagnosticError(f"a view failed on purpose (diagnostics/error, {reference})")

"""Errors reach the operator: a view's and a task's unhandled errors arrive at Sentry (a fake
Sentry endpoint here: a tiny HTTP receiver of the SDK's envelopes) with release and environment
and without personal data; without Sentry, ADMINS get Django's error mail."""

import gzip
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from health.tasks import fail
from tests.conftest import NativeStack
from tests.ports import free_port
from tests.servers import start_server

WORKER_START = Path("deployments/compose/django/celery/worker/start")


class FakeSentry(ThreadingHTTPServer):
    """Collects the events of the envelopes the SDK posts (…/api/<project>/envelope/)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                lines = body.split(b"\n")
                for header, payload in zip(lines[1::2], lines[2::2], strict=False):
                    if json.loads(header).get("type") == "event":
                        server.events.append(json.loads(payload))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def dsn(self) -> str:
        return f"http://public@127.0.0.1:{self.server_address[1]}/1"

    def wait_for(self, text: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                values = event.get("exception", {}).get("values", [])
                if any(text in (v.get("value") or "") for v in values):
                    return event
            time.sleep(0.2)
        raise AssertionError(f"no event with {text!r}: {len(self.events)} events")


@pytest.fixture
def sentry() -> Iterator[FakeSentry]:
    server = FakeSentry()
    yield server
    server.shutdown()


def serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = start_server({**env, "WEB_PORT": str(port), "WEB_CONCURRENCY": "1"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(150):
        try:
            httpx.get(base + "/healthz")
            return process, base
        except httpx.TransportError:
            assert process.poll() is None, process.stdout.read().decode()
            time.sleep(0.2)
    raise AssertionError("the web server did not start")


def raise_in_view(native_stack: NativeStack, base: str) -> httpx.Response:
    headers = {
        "X-Forwarded-Proto": "https",
        "Host": "localhost",
        "Cookie": "sessionid=secret",
        **native_stack.diagnostics_headers(),
    }
    return httpx.get(base + "/diagnostics/error", headers=headers, timeout=30)


def test_a_view_error_and_a_task_error_reach_sentry(
    native_stack: NativeStack, sentry: FakeSentry
) -> None:
    env = {**native_stack.env, "SENTRY_DSN": sentry.dsn, "SENTRY_RELEASE": "core@test"}
    web, base = serve(env)
    queue = f"errors-{uuid.uuid4().hex[:8]}"  # this worker's alone: the stack's never takes it
    # Metrics off: the stack's own worker holds its port.
    worker_env = {**env, "CELERY_QUEUES": queue, "WORKER_METRICS_PORT": "0"}
    worker = subprocess.Popen(
        [str(WORKER_START.resolve())],
        env=worker_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        response = raise_in_view(native_stack, base)
        assert response.status_code == 500
        event = sentry.wait_for("a view failed on purpose")
        assert (event["environment"], event["release"]) == ("production", "core@test")
        assert event["exception"]["values"][-1]["type"] == "DiagnosticError"
        assert event["request"]["url"].endswith("/diagnostics/error")
        # No personal data: no client address, no cookies, no diagnostics token.
        assert "ip_address" not in event.get("user", {})
        assert "secret" not in json.dumps(event["request"])
        assert native_stack.env["DIAGNOSTICS_TOKEN"] not in json.dumps(event)

        reference = uuid.uuid4().hex
        fail.apply_async(args=[reference], queue=queue)
        event = sentry.wait_for(reference)
        assert event["exception"]["values"][-1]["type"] == "DiagnosticError"
        assert (event["environment"], event["release"]) == ("production", "core@test")
        assert event["exception"]["values"][-1]["mechanism"]["type"] == "celery"
    finally:
        for process in (web, worker):
            process.terminate()
            process.wait(30)


def test_without_sentry_admins_get_the_error_mail(native_stack: NativeStack, smtp_sink) -> None:
    web, base = serve({**native_stack.env, "ADMINS": "ops@example.com"})
    try:
        assert raise_in_view(native_stack, base).status_code == 500
        mail = smtp_sink.wait_for(lambda m: "ops@example.com" in m["to"])
    finally:
        web.terminate()
        web.wait(30)
    assert "DiagnosticError" in mail.get_body(("plain",)).get_content()
    assert "/diagnostics/error" in mail["subject"]

"""The web servers: WSGI workers for ordinary requests and Uvicorn workers for the event
streams, nginx routing between them; the ASGI handler (events, and web with WEB_SERVER=asgi)
takes a sync view's request to its thread once, not once per middleware; the release step does
no work twice."""

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from asgiref.sync import SyncToAsync
from asgiref.testing import ApplicationCommunicator
from django.core.handlers.asgi import ASGIHandler

from core.asgi import DjangoASGIHandler
from tests.conftest import REPO_DIR, NativeStack
from tests.ports import free_port
from tests.stack_env import STACK_ENV

GUNICORN_CONF = REPO_DIR / "deployments" / "compose" / "django" / "gunicorn.conf.py"


def thread_names(client: httpx.Client, headers: dict[str, str], count: int) -> list[str]:
    names = []
    for _ in range(count):
        response = client.get("/diagnostics/request", headers=headers)
        assert response.status_code == 200, response.text
        names.append(response.json()["thread"])
    return names


def hops(handler: object, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(status, hops from the event loop to a thread) of one request through `handler`."""
    count = 0
    original = SyncToAsync.__call__

    async def counting(self: SyncToAsync, *args: object, **kwargs: object) -> object:
        nonlocal count
        count += 1
        return await original(self, *args, **kwargs)

    async def request() -> int:
        scope = {
            "type": "http",
            "http_version": "1.1",
            "method": "GET",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "scheme": "https",
            "headers": [(b"host", b"localhost"), *headers],
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 443),
        }
        app = ApplicationCommunicator(handler, scope)
        await app.send_input({"type": "http.request", "body": b""})
        start = await app.receive_output(10)
        await app.receive_output(10)  # the body
        return start["status"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SyncToAsync, "__call__", counting)
        status = asyncio.run(request())
    return status, count


@pytest.mark.django_db
def test_a_sync_view_takes_one_hop_to_its_thread_not_one_per_middleware(settings) -> None:
    settings.DIAGNOSTICS_TOKEN = "hops"
    token = [(b"x-diagnostics-token", b"hops")]
    ours = hops(DjangoASGIHandler(), "/diagnostics/request", token)
    djangos = hops(ASGIHandler(), "/diagnostics/request", token)
    assert ours[0] == djangos[0] == 200
    # Ours: the request_started/finished receivers, the sync chain and view, closing the
    # response. Django's own: one per sync middleware hook besides.
    assert ours[1] <= 4 and djangos[1] >= ours[1] + 5, (ours, djangos)
    assert hops(DjangoASGIHandler(), "/healthz", [])[0] == 200  # async views: the async chain


def start_server(env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Gunicorn as web's start runs it, with the given settings."""
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(GUNICORN_CONF),
        "--chdir",
        env["APP_DIR"],
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("server", "thread"),
    [
        # As shipped: Gunicorn sync workers; the view runs on the worker's main thread.
        ("wsgi", "MainThread"),
        # WEB_SERVER=asgi, the seed's Gunicorn + Uvicorn workers: Django runs the view on a
        # thread per request.
        ("asgi", "ThreadPoolExecutor-"),
    ],
)
def test_both_server_configurations_serve_the_app(
    native_stack: NativeStack, server: str, thread: str
) -> None:
    port = free_port()
    env = {**native_stack.env, "WEB_PORT": str(port), "WEB_CONCURRENCY": "1", "WEB_SERVER": server}
    process = start_server(env)
    headers = {
        "X-Forwarded-Proto": "https",
        "Host": "localhost",
        **native_stack.diagnostics_headers(),
    }
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(100):
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.stdout.read().decode()
                    time.sleep(0.2)
            names = thread_names(client, headers, 5)
            database = client.get("/diagnostics/database", headers=headers)
    finally:
        process.terminate()
        process.wait(30)
    assert all(name.startswith(thread) for name in names), names
    if thread == "ThreadPoolExecutor-":
        assert len(set(names)) == 5, names  # one thread per request
    assert database.status_code == 200 and database.json()["migrations"] > 20


def test_an_unknown_server_is_refused_by_name() -> None:
    env = {**STACK_ENV, "WEB_PORT": str(free_port()), "WEB_SERVER": "wsgi2"}
    process = start_server(env)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode != 0
    assert "WEB_SERVER='wsgi2': must be one of wsgi, asgi" in output, output


def first_stream_line(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[int, str]:
    with client.stream("GET", url, headers=headers, timeout=30) as response:
        if response.status_code != 200:
            return response.status_code, response.read().decode()
        return 200, next(response.iter_lines())


@pytest.mark.e2e
def test_nginx_sends_event_streams_to_the_events_process(native_stack: NativeStack) -> None:
    """web (WSGI workers) refuses to hold a stream on its only thread; the events process
    (Uvicorn workers) serves it, and that is where nginx sends the page's EventSource."""
    account = native_stack.signup("routes")
    browser = native_stack.session(account)
    try:
        status, line = first_stream_line(browser, "/jobs/events/", {})
        cookie = f"sessionid={browser.cookies['sessionid']}"
    finally:
        browser.close()
    assert status == 200 and line.startswith("retry: "), (status, line)
    direct = {"X-Forwarded-Proto": "https", "Host": "localhost", "Cookie": cookie}
    with httpx.Client(timeout=30) as client:
        web = first_stream_line(
            client, f"http://127.0.0.1:{native_stack.env['WEB_PORT']}/jobs/events/", direct
        )
        events = first_stream_line(
            client, f"http://127.0.0.1:{native_stack.env['EVENTS_PORT']}/jobs/events/", direct
        )
    assert web[0] == 503 and "served by the events process" in web[1], web
    assert events[0] == 200 and events[1].startswith("retry: "), events


@pytest.mark.e2e
def test_the_release_step_collects_static_files_only_when_they_changed(
    native_stack: NativeStack, tmp_path: Path
) -> None:
    env = {**native_stack.env, "STATIC_ROOT": str(tmp_path / "static")}
    release = REPO_DIR / "deployments" / "compose" / "django" / "release"

    def run() -> str:
        done = subprocess.run([str(release)], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first, second = run(), run()
    assert "Static files collected." in first
    assert (tmp_path / "static" / "staticfiles.json").exists()  # the manifest storage's
    assert "No migrations to apply." in second  # the stack's own database is up to date
    assert "Static files unchanged: not collected." in second
    shutil.rmtree(tmp_path / "static" / "admin")
    (tmp_path / "static" / ".inputs.sha256").write_text("other inputs")  # as after a change
    assert "Static files collected." in run()
    assert (tmp_path / "static" / "admin").is_dir()

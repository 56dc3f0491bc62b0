"""The web servers: WSGI workers for ordinary requests and Uvicorn workers for the event
streams, nginx routing between them; the ASGI handler (events, and web with WEB_SERVER=asgi)
takes a sync view's request to its thread once, not once per middleware; the release step does
no work twice."""

import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_DIR, NativeStack
from tests.ports import free_port
from tests.servers import start_server

GUNICORN_CONF = REPO_DIR / "deployments" / "compose" / "django" / "gunicorn.conf.py"


def thread_names(client: httpx.Client, headers: dict[str, str], count: int) -> list[str]:
    names = []
    for _ in range(count):
        response = client.get("/diagnostics/request", headers=headers)
        assert response.status_code == 200, response.text
        names.append(response.json()["thread"])
    return names


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


def test_workers_recycled_under_load_fail_no_request(native_stack: NativeStack) -> None:
    """GUNICORN_MAX_REQUESTS replaces a worker that has served its share (a leak guard): the
    worker ends after its current request and the others, then its replacement, take the queue.
    Here each of 2 workers is replaced every 20-30 requests while 8 clients keep both busy."""
    port = free_port()
    env = {
        **native_stack.env,
        "WEB_PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_MAX_REQUESTS": "20",
    }
    process = start_server(env)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(map(bytes.decode, process.stdout)))
    reader.start()
    headers = {"X-Forwarded-Proto": "https", "Host": "localhost"}

    def requests(_: int) -> list[int]:
        # A connection per request, as nginx opens them (sync workers do not keep connections).
        return [
            httpx.get(f"http://127.0.0.1:{port}/healthz", headers=headers, timeout=30).status_code
            for _ in range(40)
        ]

    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", headers=headers, timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None and time.monotonic() < deadline, "".join(output)
                time.sleep(0.2)
        with ThreadPoolExecutor(8) as pool:
            statuses = [status for batch in pool.map(requests, range(8)) for status in batch]
    finally:
        process.terminate()
        process.wait(30)
        reader.join(10)
    log = "".join(output)
    assert statuses == [200] * 320, {status: statuses.count(status) for status in set(statuses)}
    assert log.count("Autorestarting worker") >= 8, log[-3000:]


@pytest.mark.parametrize("setting", ["0", "1", "yes"])
def test_web_logs_a_line_per_request_only_when_asked(
    native_stack: NativeStack, setting: str
) -> None:
    """nginx's access log has the line (buffered); web repeats it only with GUNICORN_ACCESS_LOG=1,
    and names the variable when its value is neither."""
    port = free_port()
    env = {**native_stack.env, "WEB_PORT": str(port), "WEB_CONCURRENCY": "1"}
    process = start_server({**env, "GUNICORN_ACCESS_LOG": setting})
    url = f"http://127.0.0.1:{port}/healthz?logged-{setting}"
    headers = {"X-Forwarded-Proto": "https", "Host": "localhost"}
    try:
        deadline = time.monotonic() + 20
        while process.poll() is None:
            try:
                assert httpx.get(url, headers=headers, timeout=5).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "web did not answer within 20 s"
                time.sleep(0.2)
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode()
    if setting == "yes":
        assert process.returncode != 0
        assert "GUNICORN_ACCESS_LOG='yes': must be 0 or 1" in output, output
    else:
        assert (f"GET /healthz?logged-{setting} HTTP/1.1" in output) == (setting == "1"), output


def first_stream_line(client: httpx.Client, url: str, headers: dict[str, str]) -> tuple[int, str]:
    with client.stream("GET", url, headers=headers, timeout=30) as response:
        if response.status_code != 200:
            return response.status_code, response.read().decode()
        return 200, next(response.iter_lines())


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

"""The servers benchmarks/web.py compares serve the app: the shipped ASGI one (Django runs each
request's sync code on a thread of its own) and the WSGI reference; the release step does no
work twice."""

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_DIR, NativeStack

pytestmark = pytest.mark.e2e
GUNICORN_CONF = REPO_DIR / "deployments" / "compose" / "django" / "gunicorn.conf.py"


def thread_names(client: httpx.Client, headers: dict[str, str], count: int) -> list[str]:
    names = []
    for _ in range(count):
        response = client.get("/diagnostics/request", headers=headers)
        assert response.status_code == 200, response.text
        names.append(response.json()["thread"])
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("app", "worker", "thread"),
    [
        # As shipped: Gunicorn + Uvicorn workers; Django runs the view on a thread per request.
        ("core.asgi:application", "core.uvicorn_worker.DjangoUvicornWorker", "ThreadPoolExecutor-"),
        # The WSGI reference of benchmarks/web.py: the view runs on the worker's main thread.
        ("core.wsgi:application", "sync", "MainThread"),
    ],
)
def test_both_server_configurations_serve_the_app(
    native_stack: NativeStack, app: str, worker: str, thread: str
) -> None:
    port = free_port()
    env = {**native_stack.env, "WEB_PORT": str(port), "WEB_CONCURRENCY": "1"}
    command = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "--chdir",
               env["APP_DIR"], "--worker-class", worker, app]  # fmt: skip
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    headers = {"X-Forwarded-Proto": "https", "Host": "localhost",
               **native_stack.diagnostics_headers()}  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for _ in range(100):
                try:
                    client.get("/healthz")
                    break
                except httpx.TransportError:
                    assert server.poll() is None, server.stdout.read().decode()
                    time.sleep(0.2)
            names = thread_names(client, headers, 5)
            database = client.get("/diagnostics/database", headers=headers)
    finally:
        server.terminate()
        server.wait(30)
    assert all(name.startswith(thread) for name in names), names
    if thread == "ThreadPoolExecutor-":
        assert len(set(names)) == 5, names  # one thread per request
    assert database.status_code == 200 and database.json()["migrations"] > 20


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

"""`make dev`: the native stack in development mode (its own state and ports here), where a changed
view answers within seconds (uvicorn --reload), a changed task reaches the worker (restarted by
watchfiles), and mail lands in STACK_DIR/mail."""

import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path

import httpx
import pytest
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError

from tests.conftest import PASSWORD
from tests.stack_env import REPO_DIR

STACK_SCRIPT = REPO_DIR / "deployments" / "native" / "stack.py"
DEV_STACK = {  # ports of its own: the test stack (var/test) is running beside it
    "STACK_MODE": "dev",
    "STACK_DIR": str(REPO_DIR / "var" / "devtest"),
    "POSTGRES_PORT": "25832",
    "PGBOUNCER_PORT": "26832",
    "REDIS_BROKER_PORT": "26779",
    "REDIS_CACHE_PORT": "26780",
    "WEB_PORT": "28400",
    "EVENTS_PORT": "28401",
    "FLOWER_PORT": "25955",
    "WORKER_METRICS_PORT": "30208",
    "NGINX_STATUS_PORT": "28481",
    "NGINX_HTTP_PORT": "9380",
    "NGINX_HTTPS_PORT": "9743",
    "MAIL_PORT": "26125",
}


def run_stack(command: str) -> subprocess.CompletedProcess[str]:
    # A clean environment: nothing of the test stack's (which this process carries) leaks in.
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **DEV_STACK}
    return subprocess.run(
        [sys.executable, str(STACK_SCRIPT), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def dev_stack() -> Iterator[dict[str, str]]:
    try:
        started = run_stack("up")
        assert started.returncode == 0, started.stdout + started.stderr
        env = dict(
            line.removeprefix("export ").split("=", 1)
            for line in run_stack("env").stdout.splitlines()
            if "=" in line
        )
        yield {**DEV_STACK, **{key: value.strip("'") for key, value in env.items()}}
    finally:
        run_stack("down")


def client(env: dict[str, str]) -> httpx.Client:
    tls = ssl.create_default_context(cafile=str(Path(env["TLS_CERT"]).parent / "ca.pem"))
    return httpx.Client(
        base_url=f"https://localhost:{env['NGINX_HTTPS_PORT']}", verify=tls, timeout=10
    )


def edited(path: Path, old: str, new: str) -> Callable[[], None]:
    """Edit a source file in place; returns what puts it back."""
    original = path.read_text()
    assert old in original
    path.write_text(original.replace(old, new))
    return lambda: path.write_text(original)


def eventually(check: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except (httpx.HTTPError, OSError):
            pass  # restarting
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {seconds:.0f}s")


def test_settings_are_development_ones(dev_stack) -> None:
    assert dev_stack["DJANGO_ENV"] == "development" and dev_stack["DEBUG"] == "true"


def test_a_changed_view_answers_within_seconds(dev_stack) -> None:
    probe = uuid.uuid4().hex
    restore = edited(
        REPO_DIR / "app" / "health" / "views.py",
        'return JsonResponse({"status": "ok"})',
        f'return JsonResponse({{"status": "ok", "probe": "{probe}"}})',
    )
    try:
        with client(dev_stack) as http:
            eventually(
                lambda: http.get("/healthz").json().get("probe") == probe,
                30,
                "uvicorn --reload serving the changed view",
            )
    finally:
        restore()


def test_a_changed_task_reaches_the_worker(dev_stack, monkeypatch) -> None:
    # Celery takes these from the environment before its arguments: this process's are the test
    # stack's.
    monkeypatch.delenv("CELERY_BROKER_URL")
    monkeypatch.delenv("CELERY_RESULT_BACKEND")
    # Not the current app: shared tasks sent later in this process must keep the test stack's.
    app = Celery(
        broker=dev_stack["CELERY_BROKER_URL"],
        backend=dev_stack["CELERY_RESULT_BACKEND"],
        set_as_current=False,
    )
    probe = uuid.uuid4().hex[:8]
    restore = edited(
        REPO_DIR / "app" / "health" / "tasks.py",
        "    return value\n",
        f'    return value + "{probe}"\n',
    )

    def answers_new_code() -> bool:
        result = app.send_task("health.ping", args=["x"], ignore_result=False)
        try:
            return result.get(timeout=5) == "x" + probe
        except CeleryTimeoutError:  # sent while the worker was restarting: ask again
            return False

    try:
        eventually(answers_new_code, 60, "the worker restarted with the changed task")
    finally:
        restore()
        app.close()


def test_mail_lands_in_the_stack_mail_folder(dev_stack) -> None:
    username = f"dev-{uuid.uuid4().hex[:8]}"
    with client(dev_stack) as http:
        account = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
        created = http.post("/api/auth/signup/", json=account)
    assert created.status_code == 201, created.text
    inbox = Path(dev_stack["MAIL_DIR"]) / "new"

    def delivered() -> bool:
        for path in inbox.glob("*"):
            message = message_from_bytes(path.read_bytes())
            if f"{username}@example.com" in message["To"]:
                return "Confirm" in message["Subject"]
        return False

    eventually(delivered, 30, "the verification email in the dev mail folder")

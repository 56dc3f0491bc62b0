"""The Makefile's operator targets, run as a user types them, against the test stack."""

import json
import os
import select
import subprocess
import time
import uuid
from pathlib import Path

from tests.conftest import NativeStack
from tests.stack_env import ORIGINAL_ENVIRON, REPO_DIR, TEST_STACK_OVERRIDES


def make_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in ORIGINAL_ENVIRON.items() if not k.startswith(("STACK_", "MAKE"))}
    env.update(TEST_STACK_OVERRIDES)  # the test stack's folder and ports, not var/'s
    return {**env, **overrides}


def make(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "-s", *args],
        cwd=REPO_DIR,
        env=make_env(**env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def pids(native_stack: NativeStack, *services: str) -> dict[str, int]:
    return {service: native_stack.pid(service) for service in services}


DJANGO = ("web", "events", "celery_worker", "celery_beat", "flower")
SERVERS = ("postgres", "pgbouncer", "redis_broker", "redis_cache", "nginx")


def test_make_manage_runs_a_command_in_the_stacks_environment(native_stack: NativeStack) -> None:
    result = make("manage", "ARGS=stats --json")
    assert result.returncode == 0, result.stdout + result.stderr
    stats = json.loads(result.stdout[result.stdout.index("{") :])
    assert set(stats["jobs"]["total"]) == {"queued", "processing", "done", "failed", "canceled"}


def test_make_ps_reports_every_service_healthy(native_stack: NativeStack) -> None:
    result = make("ps")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    assert {row[0] for row in rows} >= {"web", "events", "celery_worker", "nginx", "prometheus"}
    assert all(row[2] == "healthy" for row in rows), result.stdout
    assert os.environ.get("MONITORING") == "1"  # the test stack runs the monitoring services


def test_make_logs_follows_a_services_log(native_stack: NativeStack) -> None:
    marker = f"/no-such-page-{uuid.uuid4().hex}"
    follower = subprocess.Popen(
        ["make", "-s", "logs", "S=nginx"],
        cwd=REPO_DIR,
        env=make_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        time.sleep(1)  # tail has printed the last lines and follows
        with native_stack.client() as client:
            assert client.get(marker).status_code == 404
        # nginx writes its access log within a second (buffered): read what arrives until then.
        output, seen, deadline = follower.stdout.fileno(), b"", time.monotonic() + 15
        while marker.encode() not in seen and time.monotonic() < deadline:
            if select.select([output], [], [], 0.5)[0]:
                seen += os.read(output, 65536)
        assert marker.encode() in seen, seen[-2000:]
    finally:
        os.killpg(follower.pid, 15)
        follower.wait(10)


def test_make_clean_deletes_its_stacks_state_and_nothing_else(
    native_stack: NativeStack, tmp_path
) -> None:
    state = tmp_path / "stack"
    (state / "log").mkdir(parents=True)
    (state / "log" / "web.log").write_text("an old run\n")
    result = make("clean", STACK_DIR=str(state))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Stack is not running" in result.stdout
    assert not state.exists()
    # The running test stack (another STACK_DIR) is untouched.
    assert Path(native_stack.env["STACK_DIR"], "secrets.env").exists()
    with native_stack.client() as client:
        assert client.get("/readyz").status_code == 200


def test_make_up_again_from_another_shell_restarts_nothing(native_stack: NativeStack) -> None:
    assert make("up").returncode == 0  # the code as it is now (other tests edit and restore it)
    before = pids(native_stack, *DJANGO, *SERVERS)
    result = make("up", TERM="dumb", SHLVL="7", SOME_UNRELATED_VARIABLE="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "changed" not in result.stdout, result.stdout
    assert pids(native_stack, *DJANGO, *SERVERS) == before


def test_make_up_restarts_only_the_django_processes_after_a_code_change(
    native_stack: NativeStack,
) -> None:
    servers = pids(native_stack, *SERVERS)
    django = pids(native_stack, *DJANGO)
    probe = REPO_DIR / "app" / "audio" / "code_change_probe.py"  # as a `git pull` brings
    probe.write_text('"""A module the test adds: a code change."""\n')
    try:
        result = make("up")
    finally:
        probe.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Application code changed: restarting the Django services" in result.stdout
    assert "Configuration changed" not in result.stdout
    assert pids(native_stack, *SERVERS) == servers
    after = pids(native_stack, *DJANGO)
    assert all(after[name] != django[name] for name in DJANGO), (django, after)
    with native_stack.client() as client:  # make up returned once every service was healthy
        assert client.get("/readyz").status_code == 200


def test_make_restart_stops_every_process_gracefully(native_stack: NativeStack) -> None:
    """`make restart` (down, up): each process stops on its own signal within its grace (none
    is killed), and the stack comes back healthy on new processes."""
    before = pids(native_stack, *DJANGO, *SERVERS)
    native_stack.mark_logs()
    result = make("restart")
    assert result.returncode == 0, result.stdout + result.stderr
    after = pids(native_stack, *DJANGO, *SERVERS)
    assert all(after[name] != before[name] for name in before), (before, after)
    outlived = [pid for pid in before.values() if Path(f"/proc/{pid}").exists()]
    assert outlived == [], "processes of the old stack outlived it"
    supervisor = native_stack.log("supervisord")
    assert "SIGKILL" not in supervisor, supervisor[-3000:]
    assert "Shutting down: Master" in native_stack.log("web")
    assert "Warm shutdown" in native_stack.log("celery_worker")
    with native_stack.client() as client:
        assert client.get("/readyz").status_code == 200

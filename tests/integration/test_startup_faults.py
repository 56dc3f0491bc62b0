"""Faults at start-up end in bounded waits and errors that name what and where."""

import socket
import subprocess
import time

import pytest

import envfiles
import machine
import programs
import stack
from tests.stack_env import REPO_DIR, STACK_ENV

ENTRYPOINT = REPO_DIR / "deployments" / "compose" / "django" / "entrypoint"
RELEASE = ENTRYPOINT.with_name("release")


def dependencies(stack_env: dict[str, str]) -> dict[str, str]:
    """The test stack's own database (through PgBouncer), broker and cache: never the servers
    the machine runs for everyone (5432/6379)."""
    return {name: stack_env[name] for name in ("DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL")}


def run_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), "echo", "started"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("variable", "url", "name"),
    [
        ("DATABASE_URL", "postgres://core:pw@127.0.0.1:{port}/core", "database"),
        ("CELERY_BROKER_URL", "redis://127.0.0.1:{port}/0", "broker"),
        ("CACHE_URL", "redis://127.0.0.1:{port}/1", "cache"),
    ],
)
def test_entrypoint_gives_up_naming_the_dependency(
    test_servers: object, variable: str, url: str, name: str
) -> None:
    port = closed_port()
    env = {
        **STACK_ENV,
        **dependencies(STACK_ENV),
        variable: url.format(port=port),
        "WAIT_TIMEOUT": "3",
    }
    started = time.monotonic()
    result = run_entrypoint(env)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "started" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert f"{name} at {variable}" in last
    assert str(port) in last
    assert "did not answer within 3s" in last
    assert elapsed < 30


def test_the_release_step_waits_in_its_own_process_and_names_the_database(
    test_servers: object,
) -> None:
    port = closed_port()
    env = {
        **STACK_ENV,
        **dependencies(STACK_ENV),
        "WAIT_DATABASE": "direct",  # the entrypoint leaves the wait to the release step
        "DATABASE_DIRECT_URL": f"postgres://core:pw@127.0.0.1:{port}/core",
        "WAIT_TIMEOUT": "3",
    }
    result = subprocess.run(
        [str(ENTRYPOINT), str(RELEASE)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"database at DATABASE_DIRECT_URL (127.0.0.1:{port}/core)" in last
    assert "did not answer within 3s" in last
    assert "Migrat" not in result.stdout


def test_entrypoint_runs_the_command_when_dependencies_answer(test_servers: object) -> None:
    result = run_entrypoint({**STACK_ENV, **dependencies(STACK_ENV)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("started")


def test_a_taken_port_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        env = {**STACK_ENV, "NGINX_HTTP_PORT": str(closed_port()), "NGINX_HTTPS_PORT": str(port)}
        with pytest.raises(
            envfiles.StackError, match=f"port {port} \\(NGINX_HTTPS_PORT, for nginx\\)"
        ):
            machine.check_ports(env, [s for s in programs.all_services(env) if s.name == "nginx"])


def test_a_non_numeric_port_is_named() -> None:
    env = {**STACK_ENV, "WEB_PORT": "eighty"}
    with pytest.raises(envfiles.StackError, match="WEB_PORT='eighty' is not a port number"):
        machine.check_ports(env, programs.all_services(env))


def test_an_undefined_reference_in_env_files_is_named() -> None:
    with pytest.raises(envfiles.StackError, match=r"\$\{NOPE\}"):
        envfiles.expand("x-${NOPE}", {})


def test_external_database_skips_local_postgres_and_pgbouncer() -> None:
    names = {s.name for s in programs.services_for({**STACK_ENV, "STACK_EXTERNAL_DATABASE": "1"})}
    assert "postgres" not in names and "pgbouncer" not in names
    names = {s.name for s in programs.services_for({**STACK_ENV, "POSTGRES_HOST": "db.internal"})}
    assert "postgres" not in names and "pgbouncer" in names


def test_an_unhealthy_service_is_named_with_its_log_tail(tmp_path) -> None:
    env = {**STACK_ENV, "STACK_DIR": str(tmp_path)}
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "web.log").write_text(
        "booting\nImproperlyConfigured: SECRET_KEY: too short\n"
    )
    broken = programs.Service("web", ("true",), ("false",), start_timeout=1)
    with pytest.raises(envfiles.StackError) as error:
        stack.wait_healthy(env, [broken], time.monotonic())
    message = str(error.value)
    assert message.startswith("web is not healthy")
    assert "SECRET_KEY: too short" in message

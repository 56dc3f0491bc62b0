"""Abuse through the running stack (nginx/TLS -> web): forged client identity, floods on the
credentials paths, and accounts that never confirmed their address."""

import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
import redis

import programs
from testing import signals
from tests.conftest import PASSWORD, NativeStack
from tests.http_api import CREDENTIALS_PATHS


def forged(i: int) -> dict[str, str]:
    return {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"203.0.113.{i}"}


def test_a_forged_x_forwarded_for_does_not_reset_the_login_limit(
    native_stack: NativeStack, settings
) -> None:
    allowed = int(settings.LOGIN_RATE.split("/")[0])
    with native_stack.client(local_address=native_stack.new_address()) as client:
        responses = [
            client.post(
                "/api/auth/token/", json={"username": "nobody", "password": "x"}, headers=forged(i)
            )
            for i in range(allowed + 1)
        ]
    codes = [r.status_code for r in responses]
    assert codes == [400] * allowed + [429], codes
    assert "throttled" in responses[-1].json()["detail"]  # Django's limit (nginx's is HTML)


def test_a_forged_x_forwarded_for_does_not_reset_the_signup_limit(
    native_stack: NativeStack, settings
) -> None:
    allowed = int(settings.SIGNUP_RATE.split("/")[0])
    with native_stack.client(local_address=native_stack.new_address()) as client:
        codes = []
        for i in range(allowed + 1):
            name = f"flood-{uuid.uuid4().hex[:8]}"
            response = client.post(
                "/api/auth/signup/",
                headers=forged(i),
                json={
                    "username": name,
                    "email": f"{name}@example.com",
                    "password": PASSWORD,
                },
            )
            codes.append(response.status_code)
    assert codes == [201] * allowed + [429], codes


@pytest.mark.parametrize("path", CREDENTIALS_PATHS)
def test_nginx_limits_every_credentials_path_per_address(native_stack: NativeStack, path) -> None:
    burst = int(native_stack.env["NGINX_LOGIN_BURST"])
    with native_stack.client(local_address=native_stack.new_address()) as client:
        responses = [client.get(path, headers=forged(i)) for i in range(burst + 5)]
    # nginx's own page (Django's throttles may answer 429 first on the API's paths).
    refused = [r for r in responses if r.status_code == 429 and "nginx" in r.text]
    assert refused, [r.status_code for r in responses]
    assert "strict-transport-security" in refused[0].headers  # security headers on errors too


def test_an_unverified_account_cannot_upload_until_the_emailed_link(
    native_stack: NativeStack, tmp_path
) -> None:
    account = native_stack.signup("unverified", verify=False)
    source = signals.write(tmp_path / "a.wav", signals.tone(1))

    def upload() -> httpx.Response:
        with native_stack.client() as client, source.open("rb") as f:
            return client.post(
                "/api/jobs/",
                headers=account.auth,
                data={"preset": "podcast"},
                files={"file": ("a.wav", f)},
            )

    refused = upload()
    assert refused.status_code == 403 and "confirm your email" in refused.json()["detail"]
    link = native_stack.verification_link(f"{account.username}@example.com")
    assert link.startswith(native_stack.base_url)  # SITE_URL is this stack's own address
    with native_stack.client() as client:
        assert client.get(link).status_code == 200
    assert upload().status_code == 202


@pytest.mark.parametrize("role", ["broker", "cache"])
def test_redis_serves_only_its_own_user_with_no_admin_commands(
    native_stack: NativeStack, role: str
) -> None:
    env = native_stack.env
    port = int(env[f"REDIS_{role.upper()}_PORT"])
    with pytest.raises(redis.AuthenticationError):  # the default user is off
        redis.Redis(port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, username=role, password="wrong").ping()
    url = env["CELERY_BROKER_URL" if role == "broker" else "CACHE_URL"]
    client = redis.Redis.from_url(url)
    assert client.ping()
    for command in (("CONFIG", "GET", "*"), ("FLUSHALL",), ("ACL", "LIST"), ("SHUTDOWN",)):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    if role == "broker":  # the queues cannot be wiped either
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.flushdb()
    command_line = Path(f"/proc/{native_stack.pid(f'redis_{role}')}/cmdline").read_bytes()
    password = env[f"REDIS_{role.upper()}_PASSWORD"]
    assert password.encode() not in command_line  # Redis is given its SHA-256 only
    listening = Path("/proc/net/tcp").read_text()
    assert f"0100007F:{port:04X}" in listening  # bound to 127.0.0.1 only
    assert f"00000000:{port:04X}" not in listening


def test_the_app_role_reads_and_writes_rows_and_nothing_more(native_stack: NativeStack) -> None:
    """What web, the worker and beat log in as (DATABASE_URL, through PgBouncer)."""
    with psycopg.connect(
        native_stack.env["DATABASE_URL"], autocommit=True, prepare_threshold=None
    ) as app:
        assert app.execute("SELECT count(*) FROM audio_job").fetchone()[0] >= 0
        (superuser,) = app.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert superuser == (False,)
        for forbidden in (
            "CREATE TABLE intruder (id int)",
            "DROP TABLE audio_job",
            "ALTER TABLE audio_job ADD COLUMN x int",
            "TRUNCATE audio_job",
            "SELECT rolpassword FROM pg_authid",
            "CREATE ROLE sneaky",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(forbidden)


def test_no_service_of_the_native_stack_runs_as_root(native_stack: NativeStack) -> None:
    """Started as root (as CI does), supervisord drops each program to postgres (PostgreSQL,
    PgBouncer) or the stack's own user (the rest); its children inherit that."""
    running = [
        line.split()[0]
        for line in native_stack.supervisorctl("status").splitlines()
        if line.split()[1] == "RUNNING"
    ]
    expected = [service.name for service in programs.services_for(native_stack.env)]
    assert sorted(running) == sorted(expected) and len(expected) >= 9
    for program in expected:
        pid = native_stack.pid(program)
        uids = Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[:4]
        assert "0" not in uids, (program, uids)
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for child in children:
            child_uids = Path(f"/proc/{child}/status").read_text().split("Uid:")[1].split()[:4]
            assert "0" not in child_uids, (program, child, child_uids)

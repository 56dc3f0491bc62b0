"""End to end: the native stack started by `stack.py up`, checked over HTTPS through nginx."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from core.management.commands.migrate_safely import MIGRATION_LOCK_KEY
from tests.conftest import NativeStack
from tests.stack_env import REPO_DIR


def wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def admin_console(env: dict[str, str]) -> psycopg.Connection:
    """PgBouncer's admin console (a pseudo-database named pgbouncer)."""
    return psycopg.connect(
        host="127.0.0.1",
        port=env["PGBOUNCER_PORT"],
        dbname="pgbouncer",
        user="pgbouncer",
        password=env["PGBOUNCER_ADMIN_PASSWORD"],
        autocommit=True,
        prepare_threshold=None,
    )


def pgbouncer_config(env: dict[str, str]) -> dict[str, str]:
    with admin_console(env) as conn:
        rows = conn.execute("SHOW CONFIG").fetchall()
    return {row[0]: row[1] for row in rows}


def app_sessions(env: dict[str, str]) -> set[int]:
    """Backend pids of the client sessions PostgreSQL has on the app's database as the app's
    role (PgBouncer keeps one pool per user and database)."""
    with psycopg.connect(env["DATABASE_DIRECT_URL"], autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND usename = %s "
            "AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            [env["POSTGRES_DB"], env["APP_DB_USER"]],
        ).fetchall()
    return {pid for (pid,) in rows}


def pooler_sessions(env: dict[str, str]) -> set[int]:
    """Backend pids of PgBouncer's server connections (SHOW SERVERS' remote_pid)."""
    with admin_console(env) as conn:
        cursor = conn.execute("SHOW SERVERS")
        column = [c.name for c in cursor.description].index("remote_pid")
        return {row[column] for row in cursor.fetchall()}


class PeakSessions:
    """Samples, in the background, the sessions PostgreSQL has on the app's database: the most at
    once, and any that is not one of PgBouncer's server connections (a client that bypassed it).
    PgBouncer is read after PostgreSQL, so a session opened in between is already listed."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.peak = 0
        self.bypassing: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.is_set():
            sessions = app_sessions(self.env)
            self.bypassing |= sessions - pooler_sessions(self.env)
            self.peak = max(self.peak, len(sessions))
            time.sleep(0.05)

    def __enter__(self) -> "PeakSessions":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_readyz_through_nginx_over_tls(native_stack: NativeStack) -> None:
    with native_stack.client() as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert {name for name, check in checks.items() if check["ok"]} == {
        "database",
        "cache",
        "broker",
    }


@pytest.mark.parametrize(("flag", "version"), [("--http2", "2"), ("--http1.1", "1.1")])
def test_nginx_speaks_http2_and_http1_over_tls(native_stack: NativeStack, flag, version) -> None:
    """curl offers h2 by ALPN with --http2: nginx must pick it (`http2 on`), and still serve a
    client that speaks only HTTP/1.1."""
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            flag,
            "--cacert",
            native_stack.ca_file,
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_version} %{http_code}",
            f"{native_stack.base_url}/healthz",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert result.stdout == f"{version} 200"


def test_http_redirects_to_https_except_acme(native_stack: NativeStack) -> None:
    env = native_stack.env
    http = f"http://localhost:{env['NGINX_HTTP_PORT']}"
    response = httpx.get(f"{http}/some/page?x=1")
    assert response.status_code == 301
    assert (
        response.headers["location"] == f"https://localhost:{env['NGINX_HTTPS_PORT']}/some/page?x=1"
    )

    challenge = os.path.join(env["ACME_ROOT"], ".well-known", "acme-challenge")
    os.makedirs(challenge, exist_ok=True)
    with open(os.path.join(challenge, "token123"), "w") as f:
        f.write("proof")
    os.chmod(os.path.join(challenge, "token123"), 0o644)
    response = httpx.get(f"{http}/.well-known/acme-challenge/token123")
    assert response.status_code == 200
    assert response.text == "proof"


def test_security_headers_on_every_response_including_errors(native_stack: NativeStack) -> None:
    with native_stack.client() as client:
        responses = [client.get("/no-such-page"), client.get("/readyz"), client.get("/static/nope")]
    for response in responses:
        headers = response.headers
        assert headers.get_list("strict-transport-security") == [
            "max-age=63072000; includeSubDomains"
        ], response.url
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["x-frame-options"] == "DENY"
        assert len(headers["x-request-id"]) == 32
    assert [r.status_code for r in responses] == [404, 200, 404]


def test_request_body_limit_follows_upload_max_mb(native_stack: NativeStack) -> None:
    limit = int(native_stack.env["UPLOAD_MAX_MB"]) * 1024 * 1024
    with native_stack.client() as client:
        too_big = client.post("/diagnostics/database", content=b"x" * (limit + 2 * 1024 * 1024))
        within = client.post("/diagnostics/database", content=b"x" * (limit // 2))
    assert too_big.status_code == 413
    assert "strict-transport-security" in too_big.headers
    # Within the limit, the whole body reaches Django, whose CSRF check answers (a cross-site
    # POST): nginx's 413, or a 5xx, would fail here.
    assert within.status_code == 403 and "CSRF verification failed" in within.text, within.text


def test_admin_login_is_rate_limited(native_stack: NativeStack) -> None:
    with native_stack.client() as client:
        codes = [client.get("/admin/login/").status_code for _ in range(20)]
    assert codes[0] == 200
    assert 429 in codes


def test_static_files_are_served_by_nginx_not_django(native_stack: NativeStack) -> None:
    path = "/static/admin/css/base.css"
    with native_stack.client() as client:
        response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert response.headers["x-served-by"] == "nginx"
    assert "max-age=" in response.headers["cache-control"]
    assert path not in native_stack.log("web")


def test_flower_needs_credentials(native_stack: NativeStack) -> None:
    user, password = native_stack.env["FLOWER_BASIC_AUTH"].split(":", 1)
    with native_stack.client() as client:
        assert client.get("/flower/").status_code == 401
        assert client.get("/flower/", auth=("admin", "wrong")).status_code == 401
        response = client.get("/flower/workers", auth=(user, password))
    assert response.status_code == 200
    assert "Flower" in response.text


def test_flower_password_guessing_is_rate_limited(native_stack: NativeStack) -> None:
    burst = int(native_stack.env.get("NGINX_FLOWER_BURST", "40"))
    with native_stack.client(local_address=native_stack.new_address()) as client:
        codes = [
            client.get("/flower/", auth=("admin", f"guess-{i}")).status_code
            for i in range(burst + 5)
        ]
    assert codes[0] == 401 and codes[-1] == 429, codes


def test_secret_files_are_private(native_stack: NativeStack) -> None:
    state = Path(native_stack.env["STACK_DIR"])
    for path in (
        state / "secrets.env",
        Path(native_stack.env["PGBOUNCER_CONF_DIR"]) / "userlist.txt",
    ):
        assert path.stat().st_mode & 0o777 == 0o600, path


def test_celery_task_round_trip_through_the_real_worker(native_stack: NativeStack) -> None:
    with native_stack.client() as client:
        assert client.get("/diagnostics/task").status_code == 404  # no token, no diagnostics
        response = client.get("/diagnostics/task", headers=native_stack.diagnostics_headers())
    body = response.json()
    assert response.status_code == 200, body
    assert body["ok"] is True
    assert f"Task health.ping[{body['task_id']}] succeeded" in native_stack.log("celery_worker")


def test_pgbouncer_runs_in_transaction_mode_with_scram(native_stack: NativeStack) -> None:
    config = pgbouncer_config(native_stack.env)
    assert config["pool_mode"] == "transaction"
    assert config["auth_type"] == "scram-sha-256"
    env = native_stack.env
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(
            host="127.0.0.1",
            port=env["PGBOUNCER_PORT"],
            dbname=env["POSTGRES_DB"],
            user=env["POSTGRES_USER"],
            password="wrong",
            connect_timeout=5,
        )


def test_transaction_pooling_serves_more_clients_than_the_pool_has_sessions(
    native_stack: NativeStack,
) -> None:
    """pool_size + 5 clients stay connected and each runs a query after the others have: with
    transaction pooling each query borrows a server session for its transaction only, so all
    are answered while PostgreSQL holds at most pool_size sessions. With session pooling the
    client after the pool's last would wait (query_wait_timeout, 120 s) for a session."""
    env = native_stack.env
    pool_size = int(pgbouncer_config(env)["default_pool_size"])
    answers: list[int] = []
    clients = [
        psycopg.connect(env["DATABASE_URL"], autocommit=True, prepare_threshold=None)
        for _ in range(pool_size + 5)
    ]
    try:
        for index, conn in enumerate(clients):
            query = threading.Thread(
                target=lambda c=conn: answers.append(c.execute("SELECT 1").fetchone()[0]),
                daemon=True,
            )
            query.start()
            query.join(15)
            assert len(answers) == index + 1, f"client {index + 1} of {len(clients)} waited"
            sessions = app_sessions(env)
            assert len(sessions) <= pool_size and sessions <= pooler_sessions(env)
    finally:
        for conn in clients:
            conn.close()


def test_postgres_never_sees_more_than_the_pool_under_200_direct_clients(
    native_stack: NativeStack,
) -> None:
    """200 clients straight at PgBouncer: PostgreSQL sees at most default_pool_size sessions."""
    env = native_stack.env
    pool_size = int(pgbouncer_config(env)["default_pool_size"])
    errors: list[str] = []

    def client() -> None:
        try:
            with psycopg.connect(
                env["DATABASE_URL"], prepare_threshold=None, connect_timeout=10
            ) as c:
                for _ in range(3):
                    c.execute("SELECT pg_sleep(0.05)")
                    c.commit()
        except Exception as exc:
            errors.append(repr(exc))

    with PeakSessions(env) as sessions:
        threads = [threading.Thread(target=client) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    peak = sessions.peak
    assert 1 <= peak <= pool_size, f"PostgreSQL saw {peak} sessions, pool is {pool_size}"
    assert sessions.bypassing == set()


def test_200_concurrent_clients_on_a_db_endpoint_through_nginx(native_stack: NativeStack) -> None:
    env = native_stack.env
    pool_size = int(pgbouncer_config(env)["default_pool_size"])

    async def hammer() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(
            base_url=native_stack.base_url, verify=native_stack.tls, limits=limits, timeout=60
        ) as client:
            headers = native_stack.diagnostics_headers()

            async def one_client() -> list[int]:
                codes = []
                for _ in range(3):
                    response = await client.get("/diagnostics/database", headers=headers)
                    codes.append(response.status_code)
                return codes

            results = await asyncio.gather(*(one_client() for _ in range(200)))
        return [code for codes in results for code in codes]

    with PeakSessions(env) as sessions:
        codes = asyncio.run(hammer())
    assert len(codes) == 600
    assert codes.count(200) == 600, {code: codes.count(code) for code in set(codes)}
    # web's pools (workers x DATABASE_POOL_MAX_SIZE) stay under PgBouncer's pool, so the peak
    # alone could not show a bypass: every session must be one of PgBouncer's.
    assert sessions.peak >= 1 and sessions.bypassing == set()
    assert sessions.peak <= pool_size


def test_readyz_503_while_pgbouncer_is_down_then_recovers_without_restarting_web(
    native_stack: NativeStack,
) -> None:
    web_pid = native_stack.pid("web")
    native_stack.supervisorctl("stop", "pgbouncer")
    try:
        with native_stack.client() as client:
            started = time.monotonic()
            response = client.get("/readyz")
            elapsed = time.monotonic() - started
        body = response.json()
        assert response.status_code == 503, body
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["cache"]["ok"] and body["checks"]["broker"]["ok"]
        assert elapsed < 5
    finally:
        native_stack.supervisorctl("start", "pgbouncer")

    def ready() -> bool:
        with native_stack.client() as client:
            return client.get("/readyz").status_code == 200

    assert wait_for(ready, timeout=30), "web did not recover after PgBouncer came back"
    assert native_stack.pid("web") == web_pid


@pytest.mark.parametrize("service", ["web", "celery_worker"])
def test_supervisor_restarts_a_killed_process(native_stack: NativeStack, service: str) -> None:
    """SIGKILL to web's Gunicorn master or the worker's main process (an OOM kill): supervisord
    starts it again, and it serves (web's orphaned workers leave the port; the new worker runs
    a task)."""
    old_pid = native_stack.pid(service)
    os.kill(old_pid, signal.SIGKILL)
    new_pid = wait_for(lambda: native_stack.pid(service) not in (0, old_pid), timeout=60)
    assert new_pid, native_stack.supervisorctl("status")

    def serving() -> bool:
        with native_stack.client() as client:
            if service == "web":
                return client.get("/api/presets/").status_code == 401  # answered by Django
            response = client.get("/diagnostics/task", headers=native_stack.diagnostics_headers())
            return response.status_code == 200 and response.json()["ok"]

    assert wait_for(serving, timeout=90, interval=1), native_stack.log(service)[-3000:]
    assert native_stack.pid(service) != old_pid


def test_beat_restarts_cleanly_after_kill_9(native_stack: NativeStack) -> None:
    old_pid = native_stack.pid("celery_beat")
    killed_at = time.time()
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> int:
        pid = native_stack.pid("celery_beat")
        return pid if pid and pid != old_pid else 0

    new_pid = wait_for(restarted, timeout=30)
    assert new_pid
    heartbeat = os.path.join(native_stack.env["HEARTBEAT_DIR"], "beat")
    assert wait_for(lambda: os.stat(heartbeat).st_mtime > killed_at, timeout=60)
    log_after_kill = native_stack.log("celery_beat").rsplit("beat: Starting...", 1)[-1]
    assert "pidfile" not in log_after_kill.lower()
    assert "Traceback" not in log_after_kill


def test_tls_is_mozilla_intermediate_compliant(native_stack: NativeStack) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sslyze",
            f"localhost:{native_stack.env['NGINX_HTTPS_PORT']}",
            f"--certinfo_ca_file={native_stack.ca_file}",
            "--mozilla_config=intermediate",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "OK - Compliant" in result.stdout


def test_migrations_are_safe_when_two_start_at_once(native_stack: NativeStack) -> None:
    """Migrations run directly on PostgreSQL, under an advisory lock. The test holds the lock
    while two start, sees both wait for it in pg_locks, then lets them go: one applies the
    migrations, the other finds nothing to do."""
    env = native_stack.env
    with psycopg.connect(env["DATABASE_DIRECT_URL"], autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS migrate_race")
        conn.execute("CREATE DATABASE migrate_race")
    direct = env["DATABASE_DIRECT_URL"].rsplit("/", 1)[0] + "/migrate_race"
    run_env = {**env, "DATABASE_URL": direct, "DATABASE_POOL_MAX_SIZE": "0"}
    command = [sys.executable, "manage.py", "migrate_safely"]
    with psycopg.connect(direct, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        procs = [
            subprocess.Popen(
                command,
                cwd=REPO_DIR / "app",
                env=run_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]

        def waiting() -> int:
            (count,) = holder.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND NOT l.granted AND l.objid = %s "
                "AND d.datname = 'migrate_race'",
                [MIGRATION_LOCK_KEY],
            ).fetchone()
            return count

        assert wait_for(lambda: waiting() == 2, timeout=60), "both should wait for the lock"
        assert [p.poll() for p in procs] == [None, None]
        holder.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert sum("Applying " in out for out in outputs) == 1, "exactly one process applied them"
    assert sum("No migrations to apply." in out for out in outputs) == 1, outputs
    with psycopg.connect(direct) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (app, name)) FROM django_migrations"
        ).fetchone()
    assert total == distinct > 20
    with psycopg.connect(env["DATABASE_DIRECT_URL"], autocommit=True) as conn:
        conn.execute("DROP DATABASE migrate_race")

    pooled = subprocess.run(
        command,
        cwd=REPO_DIR / "app",
        env={**env, "DATABASE_POOL_MAX_SIZE": "4"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert pooled.returncode != 0
    assert "DATABASE_POOL_MAX_SIZE=0" in pooled.stderr

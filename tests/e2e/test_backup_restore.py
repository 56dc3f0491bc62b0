"""Backups and the restore drill, on the running native stack (deployments/compose/backup/).

Users upload audio through nginx and the real worker makes renditions; `backup` dumps the
database and archives media; `restore` puts that backup into a fresh database on the same
PostgreSQL and media into a fresh directory. Every table's row count and checksum is compared
with the live database's, a web process running on the restored database and media serves the
same rendition bytes as the live stack, and the durations and sizes go to
test-artifacts/backup.json (the RPO/RTO figures in the README).
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from psycopg import sql

from testing import signals
from tests.conftest import NativeStack
from tests.http_api import upload, wait_finished
from tests.stack_env import REPO_DIR

SCRIPTS = REPO_DIR / "deployments" / "compose" / "backup"
DRILL_DB = "core_restore_drill"
DRILL_WEB_PORT = 28199


def run(env: dict[str, str], script: str, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        [str(SCRIPTS / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return result, time.monotonic() - started


def with_database(url: str, name: str, user: str | None = None, password: str | None = None):
    parts = urlsplit(url)
    netloc = parts.netloc
    if user:
        netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc, path=f"/{name}"))


def table_digests(url: str) -> dict[str, tuple[int, str]]:
    """Every table: (row count, md5 of all its rows as text in a fixed order)."""
    digests = {}
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r'"
            " AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1"
        ).fetchall()
        for (table,) in tables:
            query = sql.SQL(
                "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), ''))"
                " FROM {} t"
            ).format(sql.SQL(table))  # already quoted by format('%I.%I')
            count, digest = conn.execute(query).fetchone()
            digests[table] = (count, digest)
    return digests


def drop_database(owner_url: str, name: str) -> None:
    with psycopg.connect(with_database(owner_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def jobs(native_stack: NativeStack, tmp_path: Path) -> list[dict]:
    """Two users' finished jobs, each rendition's bytes as downloaded through nginx."""
    finished = []
    with native_stack.client() as client:
        for name, seconds in (("backup-ann", 6), ("backup-ben", 9)):
            auth = native_stack.signup(name).auth
            source = signals.write(tmp_path / f"{name}.wav", signals.program(seconds), "wav")
            response = upload(client, auth, source)
            assert response.status_code == 202, response.text
            job = wait_finished(client, auth, response.json()["id"])
            assert job["status"] == "done", job
            job["auth"] = auth
            job["downloads"] = {}
            for rendition in job["renditions"]:
                download = client.get(rendition["download_url"], headers=auth)
                assert download.status_code == 200
                job["downloads"][rendition["format"]] = download.content
            finished.append(job)
    return finished


def test_backup_then_restore_into_a_fresh_database(
    native_stack: NativeStack, jobs: list[dict], tmp_path: Path, artifacts_dir: Path
) -> None:
    env = dict(native_stack.env)
    owner_url = env["DATABASE_DIRECT_URL"]
    media_root = Path(env["MEDIA_ROOT"])
    # The scheduled service is up and judged healthy (its first backup is taken at start).
    assert "RUNNING" in native_stack.supervisorctl("status", "backup")
    health, _ = run(env, "healthcheck")
    assert health.returncode == 0, health.stdout + health.stderr

    before = table_digests(owner_url)
    backup, backup_s = run(env, "backup")
    assert backup.returncode == 0, backup.stderr
    after = table_digests(owner_url)
    backup_dir = Path(backup.stdout.strip().splitlines()[-1])
    assert backup_dir.parent == Path(env["BACKUP_DIR"]) and backup_dir.is_dir()
    assert sorted(p.name for p in backup_dir.iterdir()) == [
        "database.dump",
        "manifest.json",
        "media.tar.gz",
    ]
    assert not list(backup_dir.parent.glob(".partial-*"))
    assert {oct(p.stat().st_mode & 0o777) for p in backup_dir.iterdir()} == {"0o600"}
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    # The manifest's counts are the dump's (same snapshot): equal to the live counts of every
    # table that did not change while the backup ran.
    assert set(manifest["database"]["tables"]) == set(after)
    stable = {t for t in after if before[t] == after[t]}
    for table in stable:
        assert manifest["database"]["tables"][table] == after[table][0], table
    assert {"public.audio_job", "public.audio_rendition", "public.auth_user"} <= stable

    # The live database is refused without --force; so is a non-empty media directory.
    refused, _ = run(env, "restore", "--no-media", "latest")
    assert refused.returncode != 0 and "refusing to overwrite the live database" in refused.stderr
    drop_database(owner_url, DRILL_DB)
    media_dir = tmp_path / "restored-media"
    try:
        restore, restore_s = run(
            env, "restore", "--db", DRILL_DB, "--media-dir", str(media_dir), backup_dir.name
        )
        assert restore.returncode == 0, restore.stderr
        summary = json.loads(restore.stdout.strip().splitlines()[-1])
        drill_url = with_database(owner_url, DRILL_DB)
        restored = table_digests(drill_url)

        # Every table: same rows as the manifest; same rows and checksum as the live database
        # wherever it did not change during the backup (beat's bookkeeping may).
        assert set(restored) == set(after)
        for table, (count, _) in restored.items():
            assert count == manifest["database"]["tables"][table], table
        for table in stable:
            assert restored[table] == after[table], table

        # Media: every file byte-identical to the live one.
        live_files = {
            p.relative_to(media_root): p
            for p in media_root.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        }
        restored_files = {p.relative_to(media_dir): p for p in media_dir.rglob("*") if p.is_file()}
        assert set(live_files) <= set(restored_files)  # no upload since the backup here
        for relative, path in live_files.items():
            assert restored_files[relative].read_bytes() == path.read_bytes(), relative

        # A web process on the restored database (as the app's own role: its grants were
        # restored too) and media serves the renditions the live stack served.
        served = serve_from_restored(native_stack, media_dir, jobs)
        assert served == sum(len(job["downloads"]) for job in jobs)

        # A damaged backup is refused before anything is touched.
        damaged = tmp_path / "damaged"
        shutil.copytree(backup_dir, damaged)
        with (damaged / "database.dump").open("r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
        broken, _ = run(env, "restore", "--db", DRILL_DB, "--force", "--no-media", str(damaged))
        assert broken.returncode != 0 and "sha256 differs" in broken.stderr
        assert table_digests(drill_url) == restored
    finally:
        drop_database(owner_url, DRILL_DB)

    figures = {
        "backup_seconds": round(backup_s, 2),
        "restore_seconds": round(restore_s, 2),
        "backup": {
            "database_ms": manifest["database_ms"],
            "media_ms": manifest["media_ms"],
            "dump_bytes": manifest["database"]["bytes"],
            "media_archive_bytes": manifest["media"]["bytes"],
            "media_source_bytes": manifest["media"]["source_bytes"],
            "media_source_files": manifest["media"]["source_files"],
            "tables": len(manifest["database"]["tables"]),
            "rows": sum(manifest["database"]["tables"].values()),
        },
        "restore": {k: summary[k] for k in ("ms", "database_ms", "media_ms")},
        "tables_compared": len(restored),
        "tables_checksummed_equal_to_live": len(stable),
        "server_version": manifest["database"]["server_version"],
    }
    (artifacts_dir / "backup.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))


def serve_from_restored(native_stack: NativeStack, media_dir: Path, jobs: list[dict]) -> int:
    """Gunicorn on the restored database and media; each rendition's download answers with
    the X-Accel-Redirect nginx would follow, to a file identical to what the live stack sent."""
    env = dict(native_stack.env)
    env.update(
        DATABASE_URL=with_database(
            env["DATABASE_DIRECT_URL"], DRILL_DB, env["APP_DB_USER"], env["APP_DB_PASSWORD"]
        ),
        DATABASE_BEHIND_PGBOUNCER="false",
        MEDIA_ROOT=str(media_dir),
        WEB_PORT=str(DRILL_WEB_PORT),
        WEB_CONCURRENCY="1",
        RUN_RELEASE="0",
    )
    log = (Path(env["STACK_DIR"]) / "log" / "restore-drill-web.log").open("wb")
    web = subprocess.Popen(
        [str(REPO_DIR / "deployments" / "compose" / "django" / "start")],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    headers = {"X-Forwarded-Proto": "https", "Host": "localhost"}
    served = 0
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{DRILL_WEB_PORT}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get("/healthz", headers=headers).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert web.poll() is None and time.monotonic() < deadline, "drill web did not start"
                time.sleep(0.3)
            for job in jobs:
                for rendition in job["renditions"]:
                    path = urlsplit(rendition["download_url"]).path
                    response = client.get(path, headers={**headers, **job["auth"]})
                    assert response.status_code == 200, response.text
                    internal = response.headers["x-accel-redirect"]
                    relative = internal.split("/", 2)[2]  # /protected-media/<path in MEDIA_ROOT>
                    file = media_dir / relative
                    assert file.read_bytes() == job["downloads"][rendition["format"]]
                    served += 1
    finally:
        os.killpg(web.pid, 15)
        web.wait(timeout=30)
        log.close()
    return served

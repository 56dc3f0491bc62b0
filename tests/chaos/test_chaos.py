"""Chaos: the native stack (real nginx, web, PgBouncer, PostgreSQL, Redis, Celery worker and beat,
a real SMTP sink) killed, restarted, overloaded and starved, each scenario asserting its outcome
and recording its figures in test-artifacts/chaos.json. Scenarios run in this order, each
leaving the stack healthy for the next."""

import base64
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

import programs
from audio.processing import encode, media
from core.celery import app as celery_app
from testing import signals
from tests.chaos.conftest import Chaos, Load, load_average, start_process
from tests.sse import streams_open, tabs
from tests.stack_env import REPO_DIR

SWEEP_EVERY_S = 10
BROKER_CONF = REPO_DIR / "deployments" / "compose" / "redis" / "broker.conf"


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    """40 s of music-like programme: long enough that kills land mid-encode."""
    return signals.write(
        tmp_path_factory.mktemp("chaos") / "program.flac", signals.program(40), "flac"
    )


@pytest.fixture(scope="module", autouse=True)
def frequent_sweep(chaos: Chaos) -> None:
    """The operator's knob: the recovery sweep every 10 s (the schedule lives in the database;
    beat notices the change within its 5 s loop)."""
    (interval,) = chaos.sql(
        "INSERT INTO django_celery_beat_intervalschedule (every, period) VALUES (%s, 'seconds') "
        "RETURNING id",
        SWEEP_EVERY_S,
    )[0]
    chaos.sql(
        "UPDATE django_celery_beat_periodictask SET interval_id = %s "
        "WHERE task = 'audio.recover_stuck_jobs'",
        interval,
    )
    chaos.sql(
        "INSERT INTO django_celery_beat_periodictasks (ident, last_update) VALUES (1, now()) "
        "ON CONFLICT (ident) DO UPDATE SET last_update = now()"
    )


def emails_about(chaos: Chaos, name: str) -> int:
    return sum(name in (message["subject"] or "") for message in chaos.mail.messages)


def commits(chaos: Chaos, job_id: str) -> int:
    return sum(e.job == job_id and e.what.startswith("done (task") for e in chaos.run_log())


def test_worker_kills_lose_and_duplicate_nothing(chaos: Chaos, program: Path) -> None:
    started = time.monotonic()
    max_attempts = int(chaos.stack.env.get("AUDIO_MAX_ATTEMPTS", "3"))
    accounts = [chaos.stack.signup("kills") for _ in range(6)]  # 5 active jobs per user at most
    names: dict[str, str] = {}
    for i in range(30):
        name = f"kill-{i:02d}-{uuid.uuid4().hex[:6]}.flac"
        response = chaos.upload(accounts[i % 6], program, name)
        assert response.status_code == 202, response.text
        names[response.json()["id"]] = name
    jobs = list(names)

    # SIGKILL the worker child running a job, at random moments, while jobs are in flight. A job
    # is only killed while it has attempts left: AUDIO_MAX_ATTEMPTS exists to fail a job that
    # kills its worker every time, which is not what this scenario is about.
    rng = random.Random(20261130)
    kills: list[tuple[float, str, int]] = []
    while len(kills) < 20 and time.monotonic() - started < 240:
        time.sleep(rng.uniform(0.3, 1.5))
        active = celery_app.control.inspect(timeout=1.0).active() or {}
        running = [
            task
            for tasks in active.values()
            for task in tasks
            if task["name"] == "audio.process_job"
        ]
        attempts = dict(
            chaos.sql(
                "SELECT id::text, attempts FROM audio_job WHERE status = 'processing' "
                "AND id::text = ANY(%s)",
                jobs,
            )
        )
        victims = [t for t in running if attempts.get(t["args"][0], max_attempts) < max_attempts]
        if not victims:
            if set(chaos.statuses(jobs).values()) <= {"done", "failed"}:
                break
            continue
        victim = rng.choice(victims)
        try:
            os.kill(victim["worker_pid"], signal.SIGKILL)
        except ProcessLookupError:
            continue
        kills.append((time.time(), victim["args"][0], victim["worker_pid"]))
    assert len(kills) >= 20, f"only {len(kills)} kills landed"

    statuses = chaos.wait_finished(jobs, timeout=300)
    assert set(statuses.values()) == {"done"}, statuses
    log = chaos.run_log()
    # Every killed run was claimed again (its task redelivered, then taking over once the dead
    # run's heartbeat went stale) well within 2 minutes, not after a 30-minute sweep.
    restarts = []
    for killed_at, job_id, _pid in kills:
        again = [e.at for e in log if e.job == job_id and e.at > killed_at and "claimed" in e.what]
        assert again, f"job {job_id} never ran again after the kill at {killed_at}"
        restarts.append(again[0] - killed_at)
    assert max(restarts) < 120, restarts
    duplicated = [job for job in jobs if commits(chaos, job) != 1]
    assert duplicated == []

    with chaos.stack.client() as client:
        account_of = {job: accounts[i % 6] for i, job in enumerate(jobs)}
        measured = []
        for job_id in jobs:
            job = client.get(f"/api/jobs/{job_id}/", headers=account_of[job_id].auth).json()
            assert sorted(r["format"] for r in job["renditions"]) == ["aac", "mp3", "opus"]
            for rendition in job["renditions"]:
                body = client.get(rendition["download_url"], headers=account_of[job_id].auth)
                assert body.status_code == 200 and len(body.content) == rendition["size"]
                path = Path(chaos.stack.env["STACK_DIR"]) / f"check.{rendition['format']}"
                path.write_bytes(body.content)
                loudness = media.analyse(path, waveform=False).loudness
                assert abs(loudness.integrated_lufs + 16) <= 1.0, (job_id, loudness)
                assert loudness.true_peak_dbtp <= -1.0, (job_id, loudness)
                measured.append(loudness.integrated_lufs)
    media_root = Path(chaos.stack.env["MEDIA_ROOT"]) / "jobs"
    assert [str(p) for job in jobs for p in (media_root / job).glob("run-*")] == []
    chaos.wait(lambda: all(emails_about(chaos, names[j]) >= 1 for j in jobs), 120, "emails")
    time.sleep(2)  # a duplicate would follow right behind
    emails = {job: emails_about(chaos, names[job]) for job in jobs}
    assert set(emails.values()) == {1}, emails
    orphans = subprocess.run(["pgrep", "-f", f"{media_root}.*rendition"], capture_output=True)
    assert orphans.stdout == b"", "an encoder outlived its killed worker"
    chaos.record(
        "worker_kills",
        jobs=len(jobs),
        kills=len(kills),
        done=len(jobs),
        lost=0,
        duplicated=len(duplicated),
        emails=sum(emails.values()),
        renditions_measured=len(measured),
        max_lufs_error=round(max(abs(v + 16) for v in measured), 2),
        restart_after_kill_s={
            "max": round(max(restarts), 1),
            "median": round(statistics.median(restarts), 1),
        },
        seconds=round(time.monotonic() - started, 1),
        load_average=load_average(),
    )
    chaos.wait_healthy()


def broker(chaos: Chaos) -> redis.Redis:
    return redis.Redis.from_url(chaos.stack.env["CELERY_BROKER_URL"], socket_timeout=2)


def tasks_waiting(chaos: Chaos, job_ids: set[str]) -> int:
    """Processing tasks for these jobs in the broker's queue (beat's own tasks wait there too)."""
    messages = [json.loads(m) for m in broker(chaos).lrange("celery", 0, -1)]
    return sum(
        m["headers"]["task"] == "audio.process_job"
        and json.loads(base64.b64decode(m["body"]))[0][0] in job_ids
        for m in messages
    )


def test_broker_killed_with_tasks_queued_loses_no_job(chaos: Chaos, program: Path) -> None:
    started = time.monotonic()
    accounts = [chaos.stack.signup("broker") for _ in range(3)]  # (the worker sends the links)
    chaos.supervisor("stop", "celery_worker")
    queued = {}
    for i in range(10):
        name = f"broker-{i:02d}-{uuid.uuid4().hex[:6]}.flac"
        response = chaos.upload(accounts[i % 2], program, name)
        assert response.status_code == 202
        queued[response.json()["id"]] = name
    in_broker_before = tasks_waiting(chaos, set(queued))
    assert in_broker_before == 10
    killed_pid = chaos.kill9("redis_broker")
    chaos.wait(lambda: chaos.stack.pid("redis_broker") not in (0, killed_pid), 30, "restart")
    chaos.wait(lambda: _answers(broker(chaos)), 30, "the broker back")
    in_broker_after = tasks_waiting(chaos, set(queued))
    # SIGKILL leaves what Redis wrote to its AOF (the OS has it; everysec's window is a power
    # loss's): every acknowledged task is still there, none waits for the recovery sweep.
    assert in_broker_after == in_broker_before, (in_broker_before, in_broker_after)

    # The broker down while a user uploads: the job is stored and accepted, its task cannot be
    # sent; the recovery sweep sends it once the broker is back.
    chaos.supervisor("stop", "redis_broker")
    late = {}
    for i in range(2):
        name = f"broker-down-{i}-{uuid.uuid4().hex[:6]}.flac"
        response = chaos.upload(accounts[2], program, name)
        assert response.status_code == 202, response.text
        late[response.json()["id"]] = name
    chaos.supervisor("start", "redis_broker")
    chaos.supervisor("start", "celery_worker")
    jobs = [*queued, *late]
    statuses = chaos.wait_finished(jobs, timeout=240)
    assert set(statuses.values()) == {"done"}, statuses
    assert [job for job in jobs if commits(chaos, job) != 1] == []
    recovered = [e for e in chaos.run_log() if e.job in late and "queued again" in e.what]
    assert {e.job for e in recovered} == set(late)
    names = {**queued, **late}
    chaos.wait(lambda: all(emails_about(chaos, n) == 1 for n in names.values()), 60, "emails")
    chaos.record(
        "broker_restart",
        queued_when_killed=len(queued),
        in_broker_before_kill=in_broker_before,
        in_broker_after_restart=in_broker_after,
        lost_by_the_kill=in_broker_before - in_broker_after,
        uploaded_while_broker_down=len(late),
        recovered_by_sweep=len({e.job for e in recovered}),
        done=sum(s == "done" for s in statuses.values()),
        appendfsync=BROKER_CONF.read_text().split("appendfsync ")[1].split()[0],
        seconds=round(time.monotonic() - started, 1),
    )
    chaos.wait_healthy()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class Readiness:
    """/readyz polled twice a second in the background: (time, status)."""

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self.seen: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll)

    def _poll(self) -> None:
        with self.chaos.stack.client(timeout=10) as client:
            while not self._stop.wait(0.5):
                try:
                    status: int | str = client.get("/readyz").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.seen.append((time.monotonic(), status))

    def __enter__(self) -> "Readiness":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def test_database_restarts_under_api_load(chaos: Chaos) -> None:
    account = chaos.stack.signup("dbload")
    web = chaos.stack.pid("web")
    outages = {}
    with Readiness(chaos) as readiness, Load(chaos.stack, "/api/jobs/", account.auth) as load:
        time.sleep(3)
        for service, down_s in (("postgres", 4), ("pgbouncer", 3)):
            began = time.monotonic()
            chaos.supervisor("stop", service)
            time.sleep(down_s)
            chaos.supervisor("start", service)
            chaos.wait(chaos.ready, 60, f"ready after {service} came back")
            outages[service] = round(time.monotonic() - began, 1)
            time.sleep(2)
        time.sleep(3)
        tail_from = time.monotonic() - 3
    summary = load.summary()
    statuses = set(summary["by_status"])
    assert statuses <= {"200", "503"}, summary  # no 500, no 502/504, no timeout or reset
    assert "503" in {str(s) for _, s in readiness.seen}, "readyz never said unavailable"
    assert readiness.seen[-1][1] == 200
    assert {s for t, s, _ in load.results if t >= tail_from} == {200}, "the API did not recover"
    # Nothing hangs: a request fails after the pool's or PgBouncer's 10 s wait at most (30 s is
    # a generous bound for a loaded machine; nginx alone would wait 120 s).
    assert summary["max_ms"] < 30_000, summary
    assert chaos.stack.pid("web") == web, "web was restarted"
    chaos.record(
        "database_restarts",
        load=summary,
        outage_to_ready_s=outages,
        readyz={
            str(k): sum(1 for _, s in readiness.seen if s == k)
            for k in {s for _, s in readiness.seen}
        },
        load_average=load_average(),
    )
    chaos.wait_healthy()


def workers(chaos: Chaos, service: str) -> set[int]:
    master = chaos.stack.pid(service)
    return {int(p) for p in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


def test_graceful_reload_under_load_fails_no_request(chaos: Chaos) -> None:
    """`make reload` (HUP to web and events) twice, under API load and with open streams."""
    account = chaos.stack.signup("reload")
    services = ("web", "events")
    masters = {s: chaos.stack.pid(s) for s in services}
    before = {s: workers(chaos, s) for s in services}

    def replaced() -> bool:
        return not any(workers(chaos, s) & before[s] for s in services)

    with (
        streams_open(tabs(chaos.stack, account, 4)) as opened,
        Load(chaos.stack, "/api/jobs/", account.auth) as load,
    ):
        time.sleep(3)
        chaos.supervisor("signal", "HUP", *services)
        # Open streams end cleanly at once (the old workers do not wait for them).
        for stream in opened:
            assert stream.ended.wait(10) and stream.error is None, stream.error
        chaos.wait(replaced, 30, "the old workers gone")
        time.sleep(3)
        chaos.supervisor("signal", "HUP", *services)
        time.sleep(6)
    summary = load.summary()
    assert summary["by_status"] == {"200": summary["requests"]}, summary
    assert {s: chaos.stack.pid(s) for s in services} == masters and replaced()
    chaos.record(
        "graceful_reload",
        reloads=2,
        load=summary,
        streams_ended_cleanly=len(opened),
        load_average=load_average(),
    )


def test_stream_flood_leaves_the_api_fast(chaos: Chaos, program: Path) -> None:
    """200 open streams (20 users x 10 tabs, from 5 client addresses) while the API is under
    load; rounds without and with streams alternate on this noisy machine."""
    reader = chaos.stack.signup("reader")

    def measure() -> dict:
        with Load(chaos.stack, "/api/jobs/", reader.auth) as load:
            time.sleep(8)
        return load.summary()

    users = [chaos.stack.signup("flood") for _ in range(20)]
    clients = [
        tab
        for i, user in enumerate(users)
        for tab in tabs(chaos.stack, user, 10, f"127.0.0.{20 + i // 4}")
    ]
    rounds: dict[str, list[dict]] = {"without": [measure()], "with": []}
    with streams_open(clients) as opened:
        assert [s.status for s in opened] == [200] * 200
        rounds["with"] += [measure(), measure()]
        assert chaos.ready()
        # The streams are live: one user's job change reaches all ten of that user's tabs.
        response = chaos.upload(users[0], program, "flood.flac")
        job_id = response.json()["id"]
        with chaos.stack.client() as client:
            client.post(f"/api/jobs/{job_id}/cancel/", headers=users[0].auth)

        def everywhere() -> bool:
            return all(
                any(e["id"] == job_id and e["status"] == "canceled" for _, e in s.events)
                for s in opened[:10]
            )

        try:
            chaos.wait(everywhere, 5, "the canceled job in every tab of its owner")
        except AssertionError as exc:
            seen = [
                (s.error, s.clean_ends, [e["status"] for _, e in s.events if e["id"] == job_id])
                for s in opened[:10]
            ]
            raise AssertionError(f"{exc}; tabs (error, clean ends, events): {seen}") from None
        assert not any(e["id"] == job_id for s in opened[10:] for _, e in s.events)
        reconnects = sum(s.clean_ends for s in opened)
        refused_later = sum(s.last_status != 200 for s in opened)
    rounds["without"].append(measure())
    p99 = {kind: statistics.mean(r["p99_ms"] for r in runs) for kind, runs in rounds.items()}
    chaos.record(
        "stream_flood",
        streams=len(clients),
        rounds=rounds,
        p99_ms={k: round(v, 1) for k, v in p99.items()},
        p99_ratio=round(p99["with"] / p99["without"], 2),
        stream_reconnects=reconnects,
        streams_refused_on_reconnect=refused_later,
        load_average=load_average(),
    )
    for summary in rounds["with"]:
        assert set(summary["by_status"]) == {"200"}, summary
    assert p99["with"] <= 2 * p99["without"], rounds


def test_racing_rerun_and_cancel_never_overlap_runs(chaos: Chaos, program: Path) -> None:
    account = chaos.stack.signup("race")
    response = chaos.upload(account, program, f"race-{uuid.uuid4().hex[:6]}.flac")
    job_id = response.json()["id"]
    chaos.wait_finished([job_id], timeout=120)
    race_began = time.time()

    def act(i: int) -> int:
        with chaos.stack.client() as client:
            action = "rerun" if i % 2 == 0 else "cancel"
            return client.post(f"/api/jobs/{job_id}/{action}/", headers=account.auth).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(act, range(20)))
    assert set(codes) <= {200, 202, 409, 429}, codes
    time.sleep(1)
    chaos.wait_finished([job_id], timeout=120)
    time.sleep(3)  # a queued task still to come would show up here
    chaos.wait_finished([job_id], timeout=120)
    events = [e for e in chaos.run_log() if e.job == job_id and e.at >= race_began - 1]
    runs: dict[str, list[float]] = {}
    for event in events:
        if event.task and (
            "claimed" in event.what
            or "done (task" in event.what
            or "failed (task" in event.what
            or "stopped" in event.what
        ):
            runs.setdefault(event.task, []).append(event.at)
    intervals = sorted((min(times), max(times)) for times in runs.values())
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert end <= start, f"two runs of one job overlapped: {intervals}"
    claims = sum("claimed" in e.what for e in events)
    assert claims <= codes.count(202)
    chaos.record(
        "racing_requests",
        requests=len(codes),
        outcomes={str(c): codes.count(c) for c in set(codes)},
        runs=claims,
        overlapping_runs=0,
    )


def test_disk_full_fails_cleanly(chaos: Chaos, tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the disk-full scenario mounts a small tmpfs: run as root"
    jobs_dir = Path(chaos.stack.env["MEDIA_ROOT"]) / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    source = signals.write(tmp_path / "big.wav", signals.tone(3))  # 1.1 MB
    size_kb = source.stat().st_size // 1024 + 32  # room for the source, not for its renditions
    owner = jobs_dir.stat()  # the stack's user (web writes here)
    options = f"size={size_kb}k,mode=0755,uid={owner.st_uid},gid={owner.st_gid}"
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "chaos-media", str(jobs_dir)], check=True
    )
    try:
        account = chaos.stack.signup("disk")
        response = chaos.upload(account, source, "fills-the-disk.wav")
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        chaos.wait_finished([job_id], timeout=120)
        with chaos.stack.client() as client:
            job = client.get(f"/api/jobs/{job_id}/", headers=account.auth).json()
        assert job["status"] == "failed" and "ran out of storage space" in job["error"], job
        assert job["renditions"] == []
        assert sorted(p.name for p in (jobs_dir / job_id).iterdir()) == ["source"]
        # Now the disk is full: the next upload cannot even be stored.
        refused = chaos.upload(account, source, "no-room.wav")
        assert refused.status_code == 507, refused.text
        assert "out of storage space" in refused.json()["detail"]
        assert sorted(p.name for p in jobs_dir.iterdir()) == [job_id]
        assert chaos.ready()
    finally:
        subprocess.run(["umount", "--lazy", str(jobs_dir)], check=True)
    chaos.record(
        "disk_full",
        filesystem_kb=size_kb,
        job_error=job["error"],
        second_upload=refused.status_code,
        files_left=["source"],
    )
    chaos.wait_healthy()


def test_a_hung_encoder_fails_the_job_and_the_worker_lives_on(
    chaos: Chaos, program: Path, tmp_path: Path
) -> None:
    hang = Path(chaos.stack.env["STACK_DIR"]) / "hung-encoder"  # where the stack's user may run it
    hang.write_text("#!/bin/sh\nexec sleep 600\n")
    hang.chmod(0o755)
    worker_service = next(
        s for s in programs.all_services(chaos.stack.env) if s.name == "celery_worker"
    )
    env = {**chaos.stack.env, encode.ENCODER_EXE_ENV: str(hang)}
    soft_limit = int(env["CELERY_TASK_SOFT_TIME_LIMIT"])
    chaos.supervisor("stop", "celery_worker")
    worker = start_process(list(worker_service.command), env, tmp_path / "worker.log")
    try:
        check = list(worker_service.healthcheck)
        chaos.wait(
            lambda: subprocess.run(check, env=env, capture_output=True).returncode == 0,
            60,
            "the stand-in worker healthy",
        )
        account = chaos.stack.signup("hang")
        job_id = chaos.upload(account, program, "hangs.flac").json()["id"]
        began = time.monotonic()
        chaos.wait_finished([job_id], timeout=soft_limit + 60)
        failed_after = time.monotonic() - began
        with chaos.stack.client() as client:
            job = client.get(f"/api/jobs/{job_id}/", headers=account.auth).json()
            assert job["status"] == "failed"
            assert "longer than the time limit" in job["error"], job
            # The same worker still runs tasks (a round trip through broker and worker).
            ping = client.get("/diagnostics/task", headers=chaos.stack.diagnostics_headers())
            assert ping.status_code == 200 and ping.json()["ok"], ping.text
        assert worker.poll() is None, "the worker died"
        leftovers = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True).stdout
        assert leftovers == b"", "the hung encoder was not killed"
        jobs_dir = Path(chaos.stack.env["MEDIA_ROOT"]) / "jobs" / job_id
        assert sorted(p.name for p in jobs_dir.iterdir()) == ["source"]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
        chaos.supervisor("start", "celery_worker")
    chaos.record(
        "hung_encoder",
        soft_time_limit_s=soft_limit,
        job_error=job["error"],
        failed_after_s=round(failed_after, 1),
        worker_alive=True,
    )
    chaos.wait_healthy()

"""The chaos suite's tools: its own native stack (var/chaos, TEST_STACK=chaos), a bounded load
generator, the worker's run log, direct SQL on the stack's database, and the figures each
scenario records into test-artifacts/chaos.json."""

import json
import os
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
import psycopg
import pytest

import programs
from tests.conftest import Account, NativeStack
from tests.load import ClientThreads
from tests.stack_env import TEST_STACK

FINISHED = {"done", "failed", "canceled"}


@pytest.fixture(scope="session")
def chaos(native_stack: NativeStack, smtp_sink, artifacts_dir: Path) -> Iterator["Chaos"]:
    assert TEST_STACK == "chaos", "run the chaos suite with `make test-chaos` (TEST_STACK=chaos)"
    harness = Chaos(native_stack, smtp_sink)
    try:
        yield harness
    finally:
        path = artifacts_dir / "chaos.json"
        path.write_text(json.dumps(harness.figures, indent=2, default=str) + "\n")
        print(f"chaos figures: {path}")


@dataclass
class Chaos:
    stack: NativeStack
    mail: object
    figures: dict[str, dict] = field(default_factory=dict)

    # --- the stack ------------------------------------------------------------------------

    def sql(self, query: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.stack.env["DATABASE_DIRECT_URL"], autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def supervisor(self, *args: str) -> str:
        return self.stack.supervisorctl(*args)

    def states(self) -> dict[str, str]:
        """The supervisor state of each program this stack runs (supervisord.conf has more)."""
        names = {service.name for service in programs.services_for(self.stack.env)}
        lines = self.supervisor("status").splitlines()
        return {line.split()[0]: line.split()[1] for line in lines if line.split()[0] in names}

    def kill9(self, service: str) -> int:
        pid = self.stack.pid(service)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"{what}: not within {timeout:.0f}s")

    def ready(self) -> bool:
        try:
            with self.stack.client() as client:
                return client.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout: float = 90) -> None:
        def healthy() -> bool:
            return set(self.states().values()) == {"RUNNING"} and self.ready()

        self.wait(healthy, timeout, f"the stack healthy again ({self.states()})")

    # --- jobs -----------------------------------------------------------------------------

    def upload(self, account: Account, source: Path, name: str, preset: str = "podcast"):
        with self.stack.client() as client, source.open("rb") as f:
            return client.post(
                "/api/jobs/",
                headers=account.auth,
                data={"preset": preset},
                files={"file": (name, f)},
            )

    def statuses(self, job_ids: list[str]) -> dict[str, str]:
        rows = self.sql("SELECT id::text, status FROM audio_job WHERE id::text = ANY(%s)", job_ids)
        return dict(rows)

    def wait_finished(self, job_ids: list[str], timeout: float) -> dict[str, str]:
        def finished() -> dict[str, str] | None:
            statuses = self.statuses(job_ids)
            return statuses if set(statuses.values()) <= FINISHED else None

        try:
            return self.wait(finished, timeout, "every job finished")
        except AssertionError:
            raise AssertionError(f"unfinished: {self.statuses(job_ids)}") from None

    def run_log(self) -> list["RunEvent"]:
        """What the worker logged about runs: claims, ends, no-ops, in order (its JSON lines)."""
        events = []
        for line in self.stack.log("celery_worker").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # Celery's banner, a child's stderr
                continue
            match = RUN_LINE.match(record.get("message", ""))
            if match and record["logger"].startswith("audio.services."):
                stamp = datetime.strptime(record["time"], "%Y-%m-%d %H:%M:%S,%f")
                events.append(RunEvent(stamp.timestamp(), match["job"], match["what"]))
        return events

    def record(self, scenario: str, **figures: object) -> None:
        self.figures.setdefault(scenario, {}).update(figures)


RUN_LINE = re.compile(r"^job (?P<job>[0-9a-f-]{36}): (?P<what>.*)$")


@dataclass(frozen=True)
class RunEvent:
    at: float  # local time of the worker's log line
    job: str
    what: str

    @property
    def task(self) -> str | None:
        match = re.search(r"task ([0-9a-f-]{36})", self.what)
        return match[1] if match else None


class Load(ClientThreads):
    """A bounded closed-loop load: `threads` clients, each sending GET `path` back to back
    (keep-alive, like browsers), recording when each request started, its status and latency."""

    def __init__(
        self,
        stack: NativeStack,
        path: str,
        headers: dict[str, str],
        threads: int = 8,
        timeout: float = 60,
    ) -> None:
        super().__init__(threads)
        self.stack, self.path, self.headers, self.timeout = stack, path, headers, timeout
        self.join_timeout = timeout + 5
        self.results: list[tuple[float, int | str, float]] = []
        self.crashed: list[BaseException] = []

    def _run(self) -> None:
        try:
            self._send()
        except BaseException as exc:  # a broken load generator must fail the test, loudly
            self.crashed.append(exc)
            raise

    def _send(self) -> None:
        client = self.stack.client(timeout=self.timeout)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status: int | str = client.get(self.path, headers=self.headers).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
                client.close()
                client = self.stack.client(timeout=self.timeout)
            self.results.append((started, status, time.monotonic() - started))
        client.close()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        assert not self.crashed, f"the load generator broke: {self.crashed[0]!r}"
        assert self.results, "the load generator sent nothing"

    def summary(self) -> dict[str, object]:
        latencies = sorted(latency for _, _, latency in self.results)
        by_status: dict[str, int] = {}
        for _, status, _ in self.results:
            by_status[str(status)] = by_status.get(str(status), 0) + 1
        return {
            "requests": len(self.results),
            "by_status": by_status,
            "p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
            "p99_ms": round(1000 * percentile(latencies, 0.99), 1) if latencies else None,
            "max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        }


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def start_process(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """A stand-in for one of the stack's processes, as the same user supervisord runs it as."""
    if os.geteuid() == 0:
        command = ["runuser", "-u", env.get("STACK_USER", "core"), "--", *command]
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=env["APP_DIR"],
            start_new_session=True,
        )

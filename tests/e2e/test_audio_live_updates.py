"""Live job updates through the running stack (nginx/TLS -> web -> Redis pub/sub <- worker):
events arrive within a second of the worker's write, streams hold no database connection,
and the caps (per user, per process, per client address) answer 429."""

import asyncio
import json
import time
from datetime import datetime

from django.conf import settings

from audio import streams
from testing import signals
from tests.conftest import NativeStack
from tests.sse import streams_open, tabs


def test_a_job_change_reaches_the_stream_within_a_second(
    native_stack: NativeStack, tmp_path
) -> None:
    account = native_stack.signup("live")
    with streams_open([native_stack.session(account)]) as (stream,), native_stack.client() as api:
        assert stream.status == 200
        source = signals.write(tmp_path / "live.flac", signals.program(12), "flac")
        with source.open("rb") as f:
            created = api.post(
                "/api/jobs/",
                headers=account.auth,
                data={"preset": "podcast"},
                files={"file": ("live.flac", f)},
            )
        job_id = created.json()["id"]
        deadline = time.monotonic() + 120
        while not any(e["id"] == job_id and e["status"] == "done" for _, e in stream.events):
            assert time.monotonic() < deadline, stream.events
            time.sleep(0.1)
    mine = [(received, event) for received, event in stream.events if event["id"] == job_id]
    phases = [event["phase"] for _, event in mine]
    assert {"analysing", "encoding mp3", "encoding aac", "encoding opus"} <= set(phases), phases
    progress = [event["progress"] for _, event in mine if event["status"] == "processing"]
    assert progress == sorted(progress) and progress[0] < 40 < progress[-1] < 100, progress
    # Each event reached us (through nginx, unbuffered) at most a second after the worker wrote
    # the change (updated_at, stamped by the worker with this machine's clock).
    delays = [
        received - datetime.fromisoformat(e["updated_at"]).timestamp() for received, e in mine
    ]
    assert max(delays) < 1.0, delays


def test_open_streams_hold_no_database_connection(native_stack: NativeStack) -> None:
    """More streams than every web worker's pool has connections (2 workers x 4): the API and
    /readyz still answer at once (they did not, when each stream held a pooled connection)."""
    pool_total = int(native_stack.env["WEB_CONCURRENCY"]) * int(
        native_stack.env.get("DATABASE_POOL_MAX_SIZE", "4")
    )
    accounts = [native_stack.signup("tabs") for _ in range(3)]
    clients = [tab for a in accounts for tab in tabs(native_stack, a, 6)]
    assert len(clients) > 2 * pool_total
    with streams_open(clients) as opened, native_stack.client() as api:
        assert [s.status for s in opened] == [200] * len(clients)
        reader = native_stack.signup("reader")
        for _ in range(5):
            started = time.monotonic()
            response = api.get("/api/jobs/", headers=reader.auth)
            assert response.status_code == 200
            assert time.monotonic() - started < 2.0  # generous; it hung 10 s and failed before
        assert api.get("/readyz").status_code == 200


def test_streams_per_user_are_capped_and_the_page_falls_back(native_stack: NativeStack) -> None:
    account = native_stack.signup("greedy")
    cap = settings.SSE_MAX_STREAMS_PER_USER
    # From several client addresses, so that nginx's per-address cap is not what refuses.
    clients = [tab for i in range(4) for tab in tabs(native_stack, account, 3, f"127.0.0.{2 + i}")]
    assert len(clients) == cap + 2
    with streams_open(clients) as opened:
        statuses = sorted(s.status for s in opened)
        assert statuses == [200] * cap + [429] * 2
        refused = next(s for s in opened if s.status == 429)
        assert "live streams open already" in json.loads(refused.body)["detail"]


def test_nginx_caps_streams_per_client_address(native_stack: NativeStack) -> None:
    per_address = int(native_stack.env.get("NGINX_EVENTS_PER_ADDR", "50"))
    per_user = settings.SSE_MAX_STREAMS_PER_USER
    accounts = [native_stack.signup("nat") for _ in range(per_address // per_user + 1)]
    clients = [tab for a in accounts for tab in tabs(native_stack, a, per_user, "127.0.0.9")]
    with streams_open(clients) as opened:
        statuses = [s.status for s in opened]
        assert statuses.count(200) == per_address, statuses
        refused = [s for s in opened if s.status == 429]
        assert refused and all("nginx" in s.body for s in refused)  # nginx's page, not the app's
        # Another address is not affected.
        newcomer = native_stack.signup("elsewhere")
        with streams_open(tabs(native_stack, newcomer, 1, "127.0.0.10")) as (other,):
            assert other.status == 200


def test_streams_per_process_are_capped(native_stack: NativeStack, settings) -> None:
    """The per-process cap, on this process's hub against the stack's Redis."""
    settings.SSE_MAX_STREAMS_PER_PROCESS = 2

    async def scenario() -> list[str]:
        outcomes = []
        opened = []
        for user_id in (10_001, 10_002, 10_003):
            stream = streams.Stream(user_id)
            try:
                await stream.acquire()
                opened.append(stream)
                outcomes.append("open")
            except streams.TooManyStreams:
                outcomes.append("refused")
        opened[0].release()
        again = streams.Stream(10_003)
        await again.acquire()
        outcomes.append("open after one closed")
        for stream in [*opened[1:], again]:
            stream.release()
        return outcomes

    assert asyncio.run(scenario()) == ["open", "open", "refused", "open after one closed"]


def test_event_stream_requires_login(native_stack: NativeStack) -> None:
    with native_stack.client() as client:
        assert client.get("/jobs/events/").status_code == 401


def test_an_open_stream_keeps_its_lease_past_the_lease_lifetime(
    native_stack: NativeStack, settings
) -> None:
    """Leases live 3 keep-alives unless refreshed; each keep-alive renews the lease and the set
    holding it (else the per-user cap would forget streams that are still open)."""
    settings.SSE_KEEPALIVE_S = 1

    async def scenario() -> tuple[float | None, int]:
        stream = streams.Stream(20_001)
        await stream.acquire()
        key = streams._lease_key(20_001)
        try:
            for _ in range(5):  # 5 s: longer than the 3 s a lease lives unrefreshed
                await asyncio.sleep(1)
                await stream._refresh_lease()
            return await streams._hub.client.zscore(
                key, stream.lease
            ), await streams._hub.client.ttl(key)
        finally:
            stream.release()
            await streams._hub.client.delete(key)

    score, ttl = asyncio.run(scenario())
    assert score is not None and ttl > 0

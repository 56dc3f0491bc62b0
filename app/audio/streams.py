"""Live job events for the page (server-sent events) that hold no database connection while
they wait.

Each web process keeps one Redis pub/sub connection, subscribed to every user's job channel
(audio.services.events publishes there when a job changes), and hands each event to the open
streams of that job's owner. A stream starts from a database snapshot read after subscribing,
then only waits on its queue. Caps: SSE_MAX_STREAMS_PER_USER across processes (leases in a
Redis sorted set, refreshed by each keep-alive) and SSE_MAX_STREAMS_PER_PROCESS; beyond them a
429, and the page polls the API instead. When the pub/sub connection breaks, or the process
shuts down (core.uvicorn_worker), every stream ends and the browser reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

from core import lifecycle

from .services.events import CHANNEL_PREFIX

logger = logging.getLogger(__name__)
END = object()  # tells a stream to finish
QUEUE_SIZE = 256  # events a slow client may lag behind before its stream is ended
# The browser reconnects this long after a stream ends; spread, so that the streams a recycled
# or reloaded web process ends do not all come back in the same instant.
RETRY_MS = (2000, 8000)
SUBSCRIBE_TIMEOUT_S = 2.0

# Lease a stream slot for a user: drop expired leases, refuse beyond the cap, else add.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[3])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""
# Keep a lease (and the set holding it) alive: every keep-alive of its stream.
_REFRESH = """
if not redis.call('ZSCORE', KEYS[1], ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


class TooManyStreams(Exception):
    pass


class Unavailable(Exception):
    pass


class _Hub:
    """The process's pub/sub connection and the queues of its open streams, per user."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closing = False
        self._reset()

    def _reset(self) -> None:
        self.listener: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.queues: dict[int, set[asyncio.Queue[object]]] = {}
        self.open = 0
        self.client: aioredis.Redis | None = None

    def _for_this_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # first use (or a test's new event loop): nothing carries over
            self._reset()
            self.loop = loop
            self.client = aioredis.Redis.from_url(
                settings.CACHE_URL, socket_connect_timeout=1, socket_timeout=1
            )

    async def start(self) -> None:
        self._for_this_loop()
        if self.listener is None or self.listener.done():
            self.ready = asyncio.Event()
            self.listener = asyncio.create_task(self._listen())
        try:
            await asyncio.wait_for(self.ready.wait(), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError as exc:
            raise Unavailable("the event service did not answer") from exc

    async def _listen(self) -> None:
        client = aioredis.Redis.from_url(
            settings.CACHE_URL,
            socket_connect_timeout=1,
            socket_keepalive=True,
            health_check_interval=30,
            decode_responses=True,
        )
        try:
            async with client.pubsub() as pubsub:
                await pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
                async for message in pubsub.listen():
                    if message["type"] == "psubscribe":
                        self.ready.set()
                    elif message["type"] == "pmessage":
                        self._dispatch(message["channel"], message["data"])
        except (RedisError, OSError) as exc:
            logger.warning("event streams: pub/sub connection lost (%s); ending streams", exc)
        finally:
            self.ready.clear()
            self.end_all()
            await client.aclose()

    def _dispatch(self, channel: str, data: str) -> None:
        try:
            user_id = int(channel.rpartition(":")[2])
        except ValueError:  # not a user's channel: nothing of ours
            return
        for queue in list(self.queues.get(user_id, ())):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:  # the client lags: end its stream, it resyncs on reconnect
                queue.get_nowait()
                queue.put_nowait(END)

    def end_all(self) -> None:
        for queues in self.queues.values():
            for queue in queues:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(END)


_hub = _Hub()


def shutdown() -> None:
    """Called when the web process stops: end every stream now so the process can exit."""
    _hub.closing = True
    _hub.end_all()


def _lease_key(user_id: int) -> str:
    return f"audio:streams:{user_id}"


class Stream:
    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.lease = uuid.uuid4().hex
        self.queue: asyncio.Queue[object] = asyncio.Queue(QUEUE_SIZE)
        self.released = True  # until acquired

    async def acquire(self) -> None:
        if _hub.closing:
            raise Unavailable("the server is restarting")
        await _hub.start()
        if _hub.open >= settings.SSE_MAX_STREAMS_PER_PROCESS:
            raise TooManyStreams("this server has too many open live streams")
        # The process's slot first (no await between the check and taking it), then the lease.
        _hub.open += 1
        _hub.queues.setdefault(self.user_id, set()).add(self.queue)
        self.released = False
        assert _hub.client is not None
        try:
            granted = await _hub.client.eval(
                _ACQUIRE,
                1,
                _lease_key(self.user_id),
                time.time(),
                settings.SSE_MAX_STREAMS_PER_USER,
                3 * settings.SSE_KEEPALIVE_S,
                self.lease,
            )
        except RedisError as exc:
            self.release()
            raise Unavailable("the event service did not answer") from exc
        if not granted:
            self.release()
            raise TooManyStreams(
                f"you have {settings.SSE_MAX_STREAMS_PER_USER} live streams open already "
                "(close a tab); the page updates by polling meanwhile"
            )

    def release(self) -> None:
        """Idempotent, and a no-op before `acquire`; an unreleased lease expires by itself."""
        if self.released:
            return
        self.released = True
        _hub.open = max(0, _hub.open - 1)  # (a hub reset for a new event loop starts at 0)
        _hub.queues.get(self.user_id, set()).discard(self.queue)

    async def _refresh_lease(self) -> None:
        assert _hub.client is not None
        with contextlib.suppress(RedisError):
            await _hub.client.eval(
                _REFRESH,
                1,
                _lease_key(self.user_id),
                time.time(),
                3 * settings.SSE_KEEPALIVE_S,
                self.lease,
            )

    async def events(self, snapshot: list[str]) -> AsyncIterator[str]:
        try:
            yield f"retry: {random.randint(*RETRY_MS)}\n\n"  # noqa: S311 - jitter, not a secret
            for payload in snapshot:
                yield f"event: job\ndata: {payload}\n\n"
            deadline = time.monotonic() + settings.SSE_STREAM_SECONDS
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    item = await asyncio.wait_for(
                        self.queue.get(), min(settings.SSE_KEEPALIVE_S, remaining)
                    )
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    await self._refresh_lease()
                    continue
                if item is END:
                    break
                yield f"event: job\ndata: {item}\n\n"
        finally:
            self.release()
            if _hub.client is not None:
                with contextlib.suppress(RedisError):
                    await _hub.client.zrem(_lease_key(self.user_id), self.lease)


lifecycle.on_shutdown(shutdown)

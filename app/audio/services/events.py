"""Job changes on Redis pub/sub, for the live event streams (audio/streams.py), and a version
per user that every change bumps, which keys the cached job lists of the API (audio/api.py).

Published on the cache Redis: pub/sub stores no keys (LRU eviction never touches it), and the
broker stays dedicated to tasks. A lost event is harmless: every stream starts from a database
snapshot, and a stream that may have missed events is ended so the browser reconnects.
"""

from __future__ import annotations

import json
import logging
import uuid
from functools import cache

import redis
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction

from ..models import Job

logger = logging.getLogger(__name__)

#: What a stream sends for a job: enough for the page's job list (updated_at: when it changed).
EVENT_FIELDS = (
    "id",
    "original_name",
    "preset",
    "status",
    "phase",
    "progress",
    "error",
    "created_at",
    "updated_at",
)
CHANNEL_PREFIX = "audio:jobs:"
VERSION_PREFIX = "audio:jobs-version:"
#: A cached page lives this long at most: a change that bypasses the service functions (the
#: admin, a shell) shows within it. Every change made through them shows at once.
LIST_CACHE_S = 60


def channel(user_id: object) -> str:
    return f"{CHANNEL_PREFIX}{user_id}"


def encode(payload: dict[str, object]) -> str:
    return json.dumps(payload, cls=DjangoJSONEncoder)


@cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.CACHE_URL, socket_connect_timeout=1, socket_timeout=1)


def job_changed(job_id: uuid.UUID | str) -> None:
    """Once the current transaction commits, send the job as it then is to its owner's streams."""
    transaction.on_commit(lambda: _publish_current(job_id), robust=True)


def job_deleted(owner_id: int, job_id: uuid.UUID | str) -> None:
    payload = {"id": str(job_id), "deleted": True}
    transaction.on_commit(lambda: _publish(owner_id, payload), robust=True)


def _publish_current(job_id: uuid.UUID | str) -> None:
    row = Job.objects.filter(pk=job_id).values("owner_id", *EVENT_FIELDS).first()
    if row is not None:
        _publish(row.pop("owner_id"), row)


def _publish(owner_id: int, payload: dict[str, object]) -> None:
    try:
        with _client().pipeline(transaction=False) as pipe:
            pipe.incr(VERSION_PREFIX + str(owner_id))
            pipe.expire(VERSION_PREFIX + str(owner_id), LIST_CACHE_S * 2)
            pipe.publish(channel(owner_id), encode(payload))
            pipe.execute()
    except redis.RedisError as exc:
        logger.warning("job event for %s not published (%s)", payload["id"], exc)


#: A page of the owner's jobs, cached as the JSON bytes sent, under the owner's version.
PAGE_PREFIX = "audio:jobs-page:"
# The API's list read in one round trip: the owner's version and the page cached under it.
# (The page's key is built in the script, so it is not declared: this needs a single Redis, not
# a cluster, as the cache is here.)
_READ_PAGE = """
local version = redis.call('GET', KEYS[1]) or '0'
return {version, redis.call('GET', ARGV[1] .. version .. ':' .. ARGV[2])}
"""


@cache
def _read_page_script() -> redis.commands.core.Script:
    return _client().register_script(_READ_PAGE)


def cached_page(owner_id: int, url: str) -> tuple[str | None, bytes | None]:
    """Where the owner's page at `url` (path, query and host: its links are absolute) is cached
    as of their latest change, and the page if it is there; (None, None) without the cache. The
    version is bumped after each change commits, so a page cached under the current version was
    read after it."""
    try:
        version, body = _read_page_script()(
            keys=[VERSION_PREFIX + str(owner_id)], args=[f"{PAGE_PREFIX}{owner_id}:", url]
        )
    except redis.RedisError:
        return None, None
    return f"{PAGE_PREFIX}{owner_id}:{version.decode()}:{url}", body


# The same read for a token before anything else knows its user (audio/api.py's job_list): the
# owner its authentication cached (accounts.authentication.owner_redis_key), then as above.
_READ_KEYHOLDERS_PAGE = """
local owner = redis.call('GET', KEYS[1])
if not owner then return false end
local version = redis.call('GET', ARGV[1] .. owner) or '0'
return {owner, redis.call('GET', ARGV[2] .. owner .. ':' .. version .. ':' .. ARGV[3])}
"""


@cache
def _read_keyholders_page_script() -> redis.commands.core.Script:
    return _client().register_script(_READ_KEYHOLDERS_PAGE)


def cached_page_for_token(owner_key: str, url: str) -> tuple[int, bytes] | None:
    """The owner of a cached token and their cached page at `url`, in one round trip; None when
    either is not cached (or the cache is down): the caller then takes the full path."""
    try:
        found = _read_keyholders_page_script()(
            keys=[owner_key], args=[VERSION_PREFIX, PAGE_PREFIX, url]
        )
    except redis.RedisError:
        return None
    if not found or found[1] is None:
        return None
    return int(found[0]), found[1]


def store_page(key: str, body: bytes) -> None:
    try:
        _client().set(key, body, ex=LIST_CACHE_S)
    except redis.RedisError as exc:
        logger.warning("job list page not cached (%s)", exc)

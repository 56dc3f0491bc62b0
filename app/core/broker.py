"""What the Celery broker (Redis) holds: ids of tasks waiting in a queue, or delivered to a worker
and not yet acknowledged. The stuck-job sweep reads it so that it never sends a second task for a
job whose task is still there. Key names are kombu's Redis transport defaults."""

from __future__ import annotations

import json
import time
from typing import cast

import redis
from django.conf import settings

UNACKED = "unacked"  # hash: delivery tag -> [message, exchange, routing key]
UNACKED_INDEX = "unacked_index"  # sorted set: delivery tag -> time delivered
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)  # step 0 is the queue's own list


def _task_id(message: str | bytes | dict) -> str:
    if not isinstance(message, dict):
        message = cast(dict, json.loads(message))  # a task message is a JSON object
    return message.get("headers", {}).get("id", "")


def pending_task_ids(delivered_within_s: float, queues: tuple[str, ...]) -> set[str]:
    """Tasks in `queues`, plus those a worker received less than `delivered_within_s` ago (older
    unacknowledged deliveries belong to a worker that died, until the visibility timeout)."""
    keys = [
        q
        for queue in queues
        for q in (queue, *(f"{queue}{PRIORITY_SEPARATOR}{p}" for p in PRIORITY_STEPS))
    ]
    with redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=10) as client:
        ids = {_task_id(m) for key in keys for m in client.lrange(key, 0, -1)}
        recent = client.zrangebyscore(UNACKED_INDEX, time.time() - delivered_within_s, "+inf")
        if recent:
            ids |= {_task_id(json.loads(d)[0]) for d in client.hmget(UNACKED, recent) if d}
    ids.discard("")
    return ids

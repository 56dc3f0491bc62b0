"""The two Redis roles as their start script runs them (deployments/compose/redis/), each a real
redis-server of its own here: the broker keeps what it acknowledged across a SIGKILL (AOF) and
never evicts; the cache keeps nothing across a restart and evicts the least recently used keys
when full instead of refusing writes."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.ports import free_port
from tests.stack_env import REPO_DIR

START = REPO_DIR / "deployments" / "compose" / "redis" / "start"
PASSWORD = "a-test-password"


@contextmanager
def redis_role(role: str, data_dir: Path) -> Iterator[tuple[redis.Redis, subprocess.Popen]]:
    port = free_port()
    env = {
        "PATH": os.environ["PATH"],
        f"REDIS_{role.upper()}_PORT": str(port),
        f"REDIS_{role.upper()}_PASSWORD": PASSWORD,
        "REDIS_BIND": "127.0.0.1",
        "REDIS_DATA_DIR": str(data_dir),
    }
    process = subprocess.Popen(
        [START, role], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis(port=port, username=role, password=PASSWORD, socket_timeout=10)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, "no redis"
                time.sleep(0.1)
        yield client, process
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(10)
        client.close()


def kill9(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(10)


def test_the_broker_keeps_acknowledged_messages_across_a_sigkill(tmp_path) -> None:
    with redis_role("broker", tmp_path) as (broker, process):
        memory = broker.info("memory")
        assert (memory["maxmemory"], memory["maxmemory_policy"]) == (0, "noeviction")
        broker.rpush("celery", *[f"task-{n}" for n in range(1000)])
        kill9(process)  # right after the acknowledgement: the AOF already holds it
    with redis_role("broker", tmp_path) as (broker, _):
        assert broker.llen("celery") == 1000
        assert broker.lindex("celery", -1) == b"task-999"


def test_the_cache_starts_empty_and_evicts_when_full(tmp_path) -> None:
    with redis_role("cache", tmp_path) as (cache, process):
        memory = cache.info("memory")
        assert memory["maxmemory_policy"] == "allkeys-lru"
        limit = memory["maxmemory"]
        value = b"x" * 2**20
        written = limit // 2**20 + 64  # 64 MB past the limit: no write is refused (OOM error)
        pipe = cache.pipeline(transaction=False)
        for n in range(written):
            pipe.set(f"page:{n}", value)
            if n % 16 == 15:
                pipe.execute()
        pipe.execute()
        evicted = cache.info("stats")["evicted_keys"]
        assert evicted >= 64 and cache.dbsize() == written - evicted
        # The newest stays (Redis samples keys for LRU: not always the very oldest goes).
        assert cache.exists(f"page:{written - 1}")
        assert cache.info("memory")["used_memory"] <= limit * 1.05
        kill9(process)
    with redis_role("cache", tmp_path) as (cache, _):
        assert cache.dbsize() == 0  # no persistence: a restart is a cold cache

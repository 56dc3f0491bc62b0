"""What the broker's durability costs: Celery enqueue throughput and latency on Redis with AOF
`appendfsync everysec` (the broker's setting) vs `appendfsync always`.

Two throwaway redis-servers run the broker's own config (deployments/compose/redis/broker.conf)
with only appendfsync changed, their data on the project's disk (not tmpfs, where fsync is free).
Rounds alternate the two; each sends --tasks messages with Celery's send_task (no worker).

    .venv/bin/python benchmarks/broker_fsync.py [--tasks 2000] [--rounds 3]

Prints a table and writes benchmarks/results/broker_fsync.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery

REPO_DIR = Path(__file__).resolve().parents[1]
BROKER_CONF = REPO_DIR / "deployments" / "compose" / "redis" / "broker.conf"
RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("everysec", "always")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(mode: str, directory: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            str(BROKER_CONF),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(directory),
            "--appendfsync",
            mode,
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            return server, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError(f"redis-server ({mode}) did not start")


def enqueue(port: int, tasks: int) -> dict[str, float]:
    app = Celery(broker=f"redis://127.0.0.1:{port}/0")
    app.send_task("bench.noop", args=(0,))  # connect and declare the queue first
    latencies = []
    started = time.perf_counter()
    for i in range(tasks):
        before = time.perf_counter()
        app.send_task("bench.noop", args=(i,))
        latencies.append(time.perf_counter() - before)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "tasks_per_s": round(tasks / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 3),
        "p99_ms": round(1000 * latencies[int(0.99 * len(latencies))], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is missing (make up installs it)")
    base = REPO_DIR / "var"
    base.mkdir(exist_ok=True)
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-broker-") as scratch:
        servers = {}
        try:
            for mode in MODES:
                directory = Path(scratch) / mode
                directory.mkdir()
                servers[mode] = start_redis(mode, directory)
            for round_ in range(args.rounds):
                for mode in MODES if round_ % 2 == 0 else reversed(MODES):
                    runs[mode].append(enqueue(servers[mode][1], args.tasks))
        finally:
            for server, _ in servers.values():
                server.terminate()
                server.wait(10)
    medians = {
        mode: {key: statistics.median(run[key] for run in runs[mode]) for key in runs[mode][0]}
        for mode in MODES
    }
    ratio = round(medians["always"]["tasks_per_s"] / medians["everysec"]["tasks_per_s"], 2)
    result = {
        "what": "Celery send_task on Redis (broker.conf) by appendfsync mode",
        "tasks_per_round": args.tasks,
        "rounds": args.rounds,
        "load_average": round(os.getloadavg()[0], 2),
        "runs": runs,
        "medians": medians,
        "always_vs_everysec_throughput": ratio,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "broker_fsync.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Celery enqueue on Redis by `appendfsync` ({args.rounds} alternating rounds of "
        f"{args.tasks} tasks, load average {result['load_average']})",
        "",
        "| appendfsync | tasks/s | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {mode} | {m['tasks_per_s']:.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} |"
            for mode, m in medians.items()
        ),
        "",
        f"`always` / `everysec` throughput: {ratio}",
    ]
    (RESULTS / "broker_fsync.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Celery: from `delay()` to the task starting on an idle worker, and the whole round trip, over
sequential tasks on the benchmark stack (its real Redis broker and prefork worker).

    make bench-tasks   # = .venv/bin/python benchmarks/task_latency.py [--tasks 500]

Writes results/task_latency.{json,md}. Both ends read the same clock (one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from _common import (
    REPO_DIR,
    BenchError,
    base_environ,
    git_commit,
    load_average,
    run_stack,
    stack_python,
    write_results,
)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda pct: round(ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))], 2)  # noqa: E731
    return {"p50_ms": pick(50), "p90_ms": pick(90), "p99_ms": pick(99), "max_ms": pick(100)}


def inside(tasks: int) -> None:
    """Runs under `stack.py run`, with the stack's environment."""
    sys.path.insert(0, str(REPO_DIR / "app"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
    import django

    django.setup()
    from health.tasks import clock

    for _ in range(20):  # warm-up: connections, the worker's first fork
        clock.delay().get(timeout=30)
    start, trip = [], []
    for _ in range(tasks):
        sent = time.time()
        began = clock.delay().get(timeout=30)
        start.append((began - sent) * 1000)
        trip.append((time.time() - sent) * 1000)
        time.sleep(0.01)  # the worker is idle again when the next task comes
    print(json.dumps({"enqueue_to_start": percentiles(start), "round_trip": percentiles(trip)}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help="leave the stack running")
    args = parser.parse_args()
    if args.inside:
        inside(args.tasks)
        return 0
    env, before = base_environ(), load_average()
    try:
        run_stack(["up"], env, echo=False)
        out = run_stack(
            ["run", stack_python(), __file__, "--inside", "--tasks", str(args.tasks)],
            env,
            echo=False,
        )
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            run_stack(["down"], env, echo=False)
    figures = json.loads(out.strip().splitlines()[-1])
    payload = {
        "benchmark": "task_latency",
        "commit": git_commit(),
        "tasks": args.tasks,
        "load_average_before": before,
        "load_average_after": load_average(),
        **figures,
    }
    rows = [
        f"# Celery task latency ({args.tasks} sequential tasks, idle worker)",
        "",
        f"Commit {payload['commit']}, load average before {before}.",
        "",
        "| | p50 ms | p90 ms | p99 ms | max ms |",
        "|---|---|---|---|---|",
    ]
    for label, key in (
        ("enqueue to start (target p50 < 10, p99 < 50)", "enqueue_to_start"),
        ("round trip (the result back)", "round_trip"),
    ):
        f = figures[key]
        rows.append(f"| {label} | {f['p50_ms']} | {f['p90_ms']} | {f['p99_ms']} | {f['max_ms']} |")
    md = "\n".join(rows)
    write_results("task_latency", payload, md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())

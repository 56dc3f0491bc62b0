"""Start-up of the native stack, to all-healthy, in rounds that alternate:

    make bench-startup   # = .venv/bin/python benchmarks/startup.py [--rounds 2]

- cold: `stack.py up` on an empty state folder (initdb, secrets, every migration, collectstatic,
  a local CA and certificate): what the first `make up` on a machine does once its packages and
  virtualenv are in place;
- warm: `stack.py down`, then `stack.py up` on the same state (`make restart`): the release step
  finds no migration pending and the static files unchanged.

On the benchmark stack (var/bench, its own ports). Each run's per-service "healthy at" times come
from stack.py's own output. Writes results/startup.{json,md}.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import time

from _common import (
    BenchError,
    base_environ,
    git_commit,
    load_average,
    median,
    run_stack,
    write_results,
)

TARGETS_S = {"cold": 30.0, "warm": 10.0}


def timed(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    began = time.monotonic()
    out = run_stack(args, env, echo=False)
    return time.monotonic() - began, out


def healthy_at(output: str) -> dict[str, float]:
    return {
        m[1]: float(m[2]) for m in re.finditer(r"^\s+(\S+)\s+healthy at ([\d.]+)s", output, re.M)
    }


def one_run(kind: str, env: dict[str, str]) -> dict:
    down_s, _ = timed(["down"], env)
    if kind == "cold":
        shutil.rmtree(env["STACK_DIR"], ignore_errors=True)
    up_s, out = timed(["up"], env)
    services = healthy_at(out)
    print(f"  {kind:<5} up {up_s:5.1f} s (down before it {down_s:4.1f} s)", flush=True)
    return {
        "kind": kind,
        "up_s": round(up_s, 2),
        "down_s": round(down_s, 2),
        "healthy_at_s": services,
        "load_average": load_average(),
    }


def markdown(payload: dict) -> str:
    lines = [
        f"# Start-up benchmark ({payload['finished']}, commit {payload['commit']})",
        "",
        f"`stack.py up` to all-healthy, {payload['rounds']} alternating rounds (medians); load "
        f"average before/after {payload['load_average_before']} / "
        f"{payload['load_average_after']}.",
        "",
        "| start | up s (median) | target s | down before it s | each run's up s |",
        "|---|---|---|---|---|",
    ]
    for kind, m in payload["summary"].items():
        each = ", ".join(str(r["up_s"]) for r in payload["runs"] if r["kind"] == kind)
        lines.append(f"| {kind} | {m['up_s']} | < {TARGETS_S[kind]:g} | {m['down_s']} | {each} |")
    services = list(payload["runs"][0]["healthy_at_s"])
    lines += [
        "",
        "When each service was found healthy, seconds after `up` began (median):",
        "",
        "| service | " + " | ".join(payload["summary"]) + " |",
        "|---|" + "---|" * len(payload["summary"]),
    ]
    for name in services:
        cells = [str(m["healthy_at_s"].get(name)) for m in payload["summary"].values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for kind in TARGETS_S:
        mine = [r for r in runs if r["kind"] == kind]
        names = mine[0]["healthy_at_s"]
        summary[kind] = {
            "up_s": median([r["up_s"] for r in mine]),
            "down_s": median([r["down_s"] for r in mine]),
            "healthy_at_s": {n: median([r["healthy_at_s"][n] for r in mine]) for n in names},
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    env = base_environ()
    before = load_average()
    runs = []
    try:
        for _ in range(args.rounds):
            for kind in TARGETS_S:
                runs.append(one_run(kind, env))
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    finally:
        run_stack(["down"], env, echo=False)
    payload = {
        "benchmark": "startup",
        "commit": git_commit(),
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "rounds": args.rounds,
        "load_average_before": before,
        "load_average_after": load_average(),
        "runs": runs,
        "summary": summarize(runs),
    }
    print(write_results("startup", payload, markdown(payload))[1].read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An open-model load generator: requests start on a fixed schedule whatever the server does,
and each one's latency counts from when it was due, so queueing shows (a closed loop such as
wrk's waits for answers before sending more and hides it). wrk2, vegeta and oha are not in this
machine's package registries; this does what they do for one URL.

    .venv/bin/python benchmarks/open_load.py URL RATE SECONDS [--header 'Name: value'] [--cafile F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from urllib.parse import urlsplit

import uvloop


def _percentile(values: list[float], pct: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))], 2)


class Connections:
    """Keep-alive HTTP/1.1 connections to one server, a few asyncio stream calls a request: an
    HTTP client library costs several times the CPU a request here, and on a 2-core machine a
    busy load generator slows the server it measures (httpx made 361 req/s queue for a minute
    where wrk reaches 720)."""

    def __init__(self, url: str, headers: dict[str, str], verify: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        self.host, self.tls = parts.hostname or "localhost", parts.scheme == "https"
        self.port = parts.port or (443 if self.tls else 80)
        self.verify = (
            verify if verify is not None else (ssl.create_default_context() if self.tls else None)
        )
        lines = [
            f"GET {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.netloc}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0

    async def get(self) -> int:
        """One request on an idle connection (a new one if none is); its status."""
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.verify if self.tls else None
            )
            self.opened += 1
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        fields = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)
        }
        if b"content-length" in fields:
            await reader.readexactly(int(fields[b"content-length"]))
        else:  # chunked
            while size := int((await reader.readline()).strip(), 16):
                await reader.readexactly(size + 2)
            await reader.readline()
        if fields.get(b"connection") == b"close":
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def _run(
    url: str,
    headers: dict[str, str],
    rate: int,
    seconds: int,
    verify: ssl.SSLContext | None,
    warmup_s: float,
) -> dict:
    latencies: list[float] = []
    lags: list[float] = []
    errors: list[str] = []
    pool = Connections(url, headers, verify)

    async def one(due: float, counted: bool) -> None:
        lags.append(time.perf_counter() - due)
        try:
            status = await asyncio.wait_for(pool.get(), 30)
            problem = None if status == 200 else f"status {status}"
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as exc:
            problem = type(exc).__name__
        if counted:
            if problem:
                errors.append(problem)
            else:
                latencies.append((time.perf_counter() - due) * 1000)

    start = time.perf_counter() + 0.1
    total = int(rate * (warmup_s + seconds))
    tasks = []
    for n in range(total):
        due = start + n / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due, counted=n >= rate * warmup_s)))
    await asyncio.gather(*tasks)
    pool.close()
    return {
        "offered_rate": rate,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "completed": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": _percentile(latencies, 100),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
        "connections_opened": pool.opened,
        # How late the generator itself started requests: if this grows, the client is the limit.
        "generator_lag_p99_ms": _percentile([x * 1000 for x in lags], 99),
    }


def open_load(
    url: str,
    headers: dict[str, str],
    rate: int,
    seconds: int,
    context: ssl.SSLContext | None = None,
    warmup_s: float = 3.0,
) -> dict:
    return uvloop.run(_run(url, headers, rate, seconds, context, warmup_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("rate", type=int, help="requests per second")
    parser.add_argument("seconds", type=int)
    parser.add_argument("--header", action="append", default=[])
    parser.add_argument("--cafile")
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    context = ssl.create_default_context(cafile=args.cafile) if args.cafile else None
    print(json.dumps(open_load(args.url, headers, args.rate, args.seconds, context), indent=2))


if __name__ == "__main__":
    main()

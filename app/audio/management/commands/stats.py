"""A summary for the operator: jobs, the queue, work done, users, storage."""

from __future__ import annotations

import io
import json
from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from rich.console import Console
from rich.table import Table

from audio.services import stats

from ._common import FAILED, progress


class Command(BaseCommand):
    help = (
        "Summary of the audio service: jobs by status (all and created in the last 24 h), the "
        "broker's queue depth, runs finished with their processing seconds and the seconds of "
        "audio processed (last 24 h and total), users, and the storage the jobs keep (as the "
        "database records it; --disk measures MEDIA_ROOT too). --json for machines. Exit code "
        "0, or 1 when the broker could not be read (the rest is still printed, queue null)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument(
            "--disk",
            action="store_true",
            help="also walk MEDIA_ROOT/jobs and add up the files' sizes (slow on a large store)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        report: dict[str, Any] = stats.summary(now)
        errors = []
        try:
            report["queue"] = stats.queue_depth()
        except (redis.RedisError, OSError) as exc:
            report["queue"] = None
            errors.append(f"broker: {exc}")
        if options["disk"]:
            directories = stats.job_directories()
            total = 0
            with progress(self, len(directories), "Measuring job directories") as advance:
                for directory in directories:
                    total += stats.directory_bytes(directory)
                    advance()
            report["storage_on_disk"] = {"job_directories": len(directories), "bytes": total}
        report["errors"] = errors
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=2))
        else:
            self.stdout.write(self._render(report), ending="")
        if errors:
            raise CommandError("; ".join(errors), returncode=FAILED)

    def _render(self, report: dict[str, Any]) -> str:
        console = Console(record=True, width=100, file=io.StringIO(), force_terminal=False)
        jobs = Table(title="Jobs", title_justify="left")
        jobs.add_column("status")
        jobs.add_column("total", justify="right")
        jobs.add_column("created last 24 h", justify="right")
        for status, count in report["jobs"]["total"].items():
            jobs.add_row(status, str(count), str(report["jobs"]["created_last_24h"][status]))
        console.print(jobs)
        work = Table(title="Work done (runs finished)", title_justify="left")
        for column in ("", "runs", "done", "processing", "audio processed"):
            work.add_column(column, justify="right" if column else "left")
        for label, key in (("last 24 h", "last_24h"), ("total", "total")):
            row = report["work"][key]
            work.add_row(
                label,
                str(row["runs"]),
                str(row["done"]),
                _duration(row["processing_s"]),
                _duration(row["audio_s"]),
            )
        console.print(work)
        queue = report["queue"]
        if queue is None:
            console.print("Queue: [bold red]broker unreachable[/]")
        else:
            console.print(
                f"Queue: {queue['waiting']} tasks waiting, "
                f"{queue['unacknowledged']} delivered to workers (unacknowledged)"
            )
        users = report["users"]
        console.print(
            f"Users: {users['total']} ({users['active']} active, "
            f"{users['with_jobs_since']} created jobs in the last 24 h)"
        )
        recorded = report["storage_recorded_bytes"]
        console.print(
            f"Storage (recorded): {_size(recorded['total'])} = sources "
            f"{_size(recorded['sources'])} + renditions {_size(recorded['renditions'])}"
        )
        if disk := report.get("storage_on_disk"):
            console.print(
                f"Storage (on disk): {_size(disk['bytes'])} in {disk['job_directories']} "
                "job directories"
            )
        return console.export_text()


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _size(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "B" else f"{count} B"
        size /= 1024
    return f"{size:.1f} TiB"

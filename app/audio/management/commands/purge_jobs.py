"""Delete the files (and with --delete the rows) of finished jobs: beat's purge, with filters."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.utils import timezone

from audio.models import Job
from audio.services import housekeeping

from ._common import bad_input, non_negative, progress, resolve_user


class Command(BaseCommand):
    help = (
        "Purge finished jobs: delete their files (source, renditions, waveform) and keep the rows "
        "marked purged, as beat's nightly purge does past AUDIO_RETENTION_DAYS; with --delete, "
        "delete the jobs altogether. Queued and processing jobs are never touched. "
        "Exit code 0 done, 2 bad input."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="list what would be purged; change nothing"
        )
        parser.add_argument(
            "--older-than-days",
            type=float,
            metavar="DAYS",
            help="finished more than DAYS ago (default AUDIO_RETENTION_DAYS; 0: every finished "
            "job that matches the other filters)",
        )
        parser.add_argument(
            "--user", metavar="USER", help="only this user's jobs (username, email or id)"
        )
        parser.add_argument(
            "--status",
            action="append",
            metavar="STATUS",
            help=f"only jobs in this status ({', '.join(Job.FINISHED)}); repeat or "
            "comma-separate for several (default: all three)",
        )
        parser.add_argument(
            "--delete",
            action="store_true",
            help="delete the jobs (rows and files; their owners no longer see them), including "
            "those whose files were purged already",
        )
        parser.add_argument(
            "--no-input",
            "--noinput",
            action="store_false",
            dest="interactive",
            help="do not ask before --delete",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days = non_negative(options["older_than_days"], "--older-than-days")
        statuses = None
        if options["status"]:
            statuses = {s.strip() for value in options["status"] for s in value.split(",")}
            if unknown := statuses - set(Job.FINISHED):
                raise bad_input(
                    f"--status {', '.join(sorted(unknown))}: only finished jobs can be purged "
                    f"(choose from {', '.join(Job.FINISHED)})"
                )
        owner = resolve_user(options["user"]) if options["user"] else None
        delete = options["delete"]
        now = timezone.now()
        selected = housekeeping.purgeable_jobs(
            now, older_than_days=days, owner=owner, statuses=statuses, include_purged=delete
        )
        jobs = list(selected.select_related("owner"))
        verb = "delete" if delete else "purge the files of"
        if not jobs:
            self.stdout.write("No jobs to purge.")
            return
        if options["dry_run"]:
            for job in jobs:
                self.stdout.write(
                    f"would {verb} {job.pk}  {job.status:<8} finished "
                    f"{job.finished_at:%Y-%m-%d %H:%M}  user={job.owner.get_username()}"
                )
            self.stdout.write(f"Dry run, nothing changed: {len(jobs)} jobs to {verb}.")
            return
        if delete and options["interactive"]:
            answer = input(f"Delete {len(jobs)} jobs and their files for good? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                self.stdout.write("Nothing deleted.")
                return
        done = 0
        with progress(self, len(jobs), f"{verb.capitalize()} jobs") as advance:
            for job in jobs:
                if delete:
                    done += housekeeping.delete_finished_job(job)
                else:
                    done += housekeeping.purge_job_files(job, now)
                advance()
        skipped = len(jobs) - done
        what = "Deleted" if delete else "Purged the files of"
        self.stdout.write(
            self.style.SUCCESS(f"{what} {done} jobs")
            + (f" ({skipped} changed meanwhile, left alone)." if skipped else ".")
        )

"""Send the "job finished" email again for chosen jobs."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audio.models import Job
from audio.services import notifications

from ._common import FAILED, bad_input, parse_job_ids, parse_when, progress, resolve_user


class Command(BaseCommand):
    help = (
        'Send the "job finished" email again (done and failed jobs), on purpose: also when it '
        "was sent before. Choose jobs by id, by --user and/or by a --since/--until window on "
        "when they finished (every filter given must match). Sent from this process, now. A job "
        "whose first email is being sent at this very moment is skipped as busy. Each re-sent "
        "message has a Message-ID of its own (and In-Reply-To the first), so mail clients show "
        "it rather than fold it into the first. Exit code 0 all sent, 1 some could not be sent "
        "(mail server, busy), 2 bad input (nothing sent)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="job ids (UUIDs)")
        parser.add_argument(
            "--user", metavar="USER", help="jobs of this user (username, email or id)"
        )
        parser.add_argument(
            "--since",
            metavar="WHEN",
            help="jobs finished at or after WHEN: ISO 8601 (2026-05-01, 2026-05-01T12:00Z) or a "
            "time ago (90m, 24h, 7d)",
        )
        parser.add_argument("--until", metavar="WHEN", help="jobs finished before WHEN")
        parser.add_argument(
            "--dry-run", action="store_true", help="list who would be emailed; send nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        job_ids = parse_job_ids(options["job_ids"])
        owner = resolve_user(options["user"]) if options["user"] else None
        since = parse_when(options["since"], "--since") if options["since"] else None
        until = parse_when(options["until"], "--until") if options["until"] else None
        if not (job_ids or owner or since or until):
            raise bad_input("choose the jobs: job ids, --user, --since or --until (or several)")
        if since and until and since >= until:
            raise bad_input("--since must be before --until")
        if job_ids:
            self._check_ids(job_ids)
        selected = notifications.notifiable_jobs(
            job_ids=job_ids, owner=owner, finished_since=since, finished_until=until
        )
        jobs = list(selected.select_related("owner"))
        if not jobs:
            self.stdout.write("No done or failed jobs match.")
            return
        if options["dry_run"]:
            for job in jobs:
                self.stdout.write(
                    f"would email {job.owner.email or '(no address)'} about {job.pk} "
                    f"({job.status}, finished {job.finished_at:%Y-%m-%d %H:%M})"
                )
            self.stdout.write(f"Dry run, nothing sent: {len(jobs)} jobs.")
            return
        outcomes: dict[str, list[Job]] = {}
        errors: list[str] = []
        with progress(self, len(jobs), "Sending emails") as advance:
            for job in jobs:
                try:
                    outcome = notifications.resend_job_notification(job.pk)
                except Exception as exc:  # the mail server refused or is down: go on
                    outcome = "error"
                    errors.append(f"{job.pk}: {type(exc).__name__}: {exc}")
                outcomes.setdefault(outcome, []).append(job)
                advance()
        for line in errors:
            self.stderr.write(line)
        for job in outcomes.get(notifications.BUSY, []):
            self.stderr.write(f"{job.pk}: being sent by another sender right now; skipped")
        counts = {key: len(value) for key, value in outcomes.items()}
        self.stdout.write(
            f"Sent {counts.get(notifications.SENT, 0)}, owner without email "
            f"{counts.get(notifications.NO_EMAIL, 0)}, busy {counts.get(notifications.BUSY, 0)}, "
            f"no longer finished {counts.get(notifications.NOT_FINISHED, 0)}, "
            f"failed {counts.get('error', 0)}."
        )
        unsent = counts.get("error", 0) + counts.get(notifications.BUSY, 0)
        if unsent:
            raise CommandError(f"{unsent} emails could not be sent", returncode=FAILED)

    def _check_ids(self, job_ids: list) -> None:
        """Ids given by hand must name done or failed jobs: anything else is a mistake."""
        found = dict(Job.objects.filter(pk__in=job_ids).values_list("pk", "status"))
        problems = [
            f"{job_id}: no such job" if job_id not in found else f"{job_id}: {found[job_id]}"
            for job_id in job_ids
            if found.get(job_id) not in notifications.NOTIFIED_STATUSES
        ]
        if problems:
            raise bad_input(
                "only done and failed jobs have a finished email; nothing sent:\n  "
                + "\n  ".join(problems)
            )

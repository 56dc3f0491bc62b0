"""Queue again the jobs whose task is gone: beat's stuck-job sweep, now, with filters."""

from __future__ import annotations

from typing import Any

import redis
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from audio.services import housekeeping

from ._common import FAILED, non_negative, progress, resolve_user


class Command(BaseCommand):
    help = (
        "Queue again the jobs stuck in queued or processing whose task is gone: what beat's "
        "recover_stuck_jobs sweep does every 5 minutes, now, with the same rules. Stuck: queued "
        "for longer than AUDIO_QUEUED_GRACE_S, or processing with no heartbeat for "
        "AUDIO_HEARTBEAT_TIMEOUT_S. A job whose task still waits in the broker or was delivered "
        "to a worker lately is left to it; a processing job that has used its AUDIO_MAX_ATTEMPTS "
        "fails instead. Exit code 0 done, 1 the broker could not be read, 2 bad input."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="list what would be done; change nothing"
        )
        parser.add_argument(
            "--older-than",
            type=float,
            metavar="SECONDS",
            help="stuck for longer than this instead of the settings' thresholds (a processing "
            "job's heartbeat is never taken for stale before AUDIO_HEARTBEAT_TIMEOUT_S)",
        )
        parser.add_argument(
            "--user", metavar="USER", help="only this user's jobs (username, email or id)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        older_than = non_negative(options["older_than"], "--older-than")
        owner = resolve_user(options["user"]) if options["user"] else None
        now = timezone.now()
        try:
            stuck = housekeeping.stuck_jobs(now, older_than_s=older_than, owner=owner)
        except (redis.RedisError, BrokerError, OSError) as exc:
            raise CommandError(
                f"the broker could not be read, so nothing was requeued: {exc}", returncode=FAILED
            ) from exc
        if not stuck:
            self.stdout.write("No stuck jobs.")
            return
        if options["dry_run"]:
            for job in stuck:
                self.stdout.write(
                    f"would {job.action:<7} {job.pk}  {job.status:<10} attempts={job.attempts}  "
                    f"user={job.owner_id}  task={job.task_id or '-'}"
                )
            actions = [job.action for job in stuck]
            self.stdout.write(
                "Dry run, nothing changed: "
                + ", ".join(f"{actions.count(a)} to {a}" for a in housekeeping.OUTCOMES)
            )
            return
        result = dict.fromkeys(housekeeping.OUTCOMES.values(), 0)
        changed = 0
        with progress(self, len(stuck), "Recovering stuck jobs") as advance:
            for job in stuck:
                outcome = housekeeping.recover_stuck_job(job, now)
                if outcome:
                    result[outcome] += 1
                else:
                    changed += 1
                if options["verbosity"] >= 2:
                    self.stdout.write(f"{job.pk}: {outcome or 'changed meanwhile, left alone'}")
                advance()
        self.stdout.write(
            self.style.SUCCESS(
                f"Requeued {result['requeued']}, failed {result['failed']}, left to their task "
                f"{result['left_to_their_task']}, changed meanwhile {changed}."
            )
        )

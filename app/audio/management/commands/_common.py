"""What the operator commands share: exit codes, parsing of users and times, progress bars."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Exit codes: 0 done; 1 something failed (the broker, the mail server, a job not processed);
#: 2 bad input (nothing was changed).
FAILED = 1
BAD_INPUT = 2

_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def bad_input(message: str) -> CommandError:
    return CommandError(message, returncode=BAD_INPUT)


def resolve_user(identifier: str) -> User:
    """A user by username, else by email address (case-insensitive), else by numeric id."""
    users = get_user_model().objects
    user = users.filter(username=identifier).first()
    if user is None and "@" in identifier:
        matches = list(users.filter(email__iexact=identifier)[:2])
        if len(matches) > 1:
            raise bad_input(
                f"more than one user has the email address {identifier!r}; give the username"
            )
        user = matches[0] if matches else None
    if user is None and identifier.isdigit():
        user = users.filter(pk=int(identifier)).first()
    if user is None:
        raise bad_input(f"no user {identifier!r} (give a username, email address or id)")
    return user


def parse_when(value: str, option: str, now: datetime | None = None) -> datetime:
    """A point in time: an ISO 8601 date or date-time (the current time zone when it has none),
    or a time ago: 90s, 30m, 24h, 7d."""
    now = now or timezone.now()
    ago = _AGO.match(value.strip())
    if ago:
        return now - timedelta(**{_UNITS[ago[2]]: float(ago[1])})
    try:
        when = parse_datetime(value)
        if when is None and (day := parse_date(value)) is not None:
            when = datetime(day.year, day.month, day.day)
    except ValueError:
        when = None
    if when is None:
        raise bad_input(
            f"{option}: {value!r} is neither an ISO 8601 date/date-time "
            "(2026-05-01, 2026-05-01T12:00+02:00) nor a time ago (90m, 24h, 7d)"
        )
    return timezone.make_aware(when) if timezone.is_naive(when) else when


def parse_job_ids(values: list[str]) -> list[uuid.UUID]:
    ids = []
    for value in values:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:
            raise bad_input(f"{value!r} is not a job id (a UUID)") from None
    return ids


def non_negative(value: float | None, option: str) -> float | None:
    if value is not None and value < 0:
        raise bad_input(f"{option} must be 0 or more, not {value}")
    return value


@contextmanager
def progress(command: BaseCommand, total: int, description: str) -> Iterator[Callable[[], None]]:
    """A progress bar on the command's stderr (shown only on a terminal: piped or captured output
    gets the command's result lines alone); yields the function that advances it by one."""
    console = Console(file=getattr(command.stderr, "_out", sys.stderr), stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)

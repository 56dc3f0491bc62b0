"""Wait until PostgreSQL (through the configured connection), the broker and the cache answer.

Bounded: gives up after --timeout seconds with an error naming what failed and where.
"""

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from health.checks import check_broker, check_cache, check_database, describe


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or ''}{parts.path}"


class Command(BaseCommand):
    help = "Wait for the database, the Celery broker and the cache to answer a real request."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds (default 60)")
        parser.add_argument("--interval", type=float, default=1.0)
        parser.add_argument(
            "--database-variable",
            default="DATABASE_URL",
            help="the variable the database URL came from (for messages)",
        )

    def handle(
        self, *args: Any, timeout: float, interval: float, database_variable: str, **options: Any
    ) -> None:
        db = settings.DATABASES["default"]
        targets: list[tuple[str, str, Callable[[], None]]] = [
            (
                "database",
                f"{database_variable} ({db['HOST']}:{db['PORT']}/{db['NAME']})",
                check_database,
            ),
            ("broker", f"CELERY_BROKER_URL ({_where(settings.CELERY_BROKER_URL)})", check_broker),
            ("cache", f"CACHE_URL ({_where(settings.CACHE_URL)})", check_cache),
        ]
        deadline = time.monotonic() + timeout
        for name, where, check in targets:
            attempt = 0
            while True:
                attempt += 1
                try:
                    check()
                except Exception as exc:
                    if time.monotonic() + interval > deadline:
                        raise CommandError(
                            f"{name} at {where} did not answer within {timeout:.0f}s "
                            f"({attempt} attempts): {describe(exc)}"
                        ) from exc
                    if attempt == 1 or attempt % 10 == 0:
                        self.stderr.write(f"waiting for {name} at {where}: {describe(exc)}")
                    time.sleep(interval)
                else:
                    self.stdout.write(f"{name} is ready ({where})")
                    break

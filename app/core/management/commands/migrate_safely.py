"""`migrate` under a PostgreSQL session advisory lock, so that replicas starting at once are safe.

Session advisory locks do not survive PgBouncer's transaction pooling, so this must run on a
direct connection to PostgreSQL: the start script points DATABASE_URL at DATABASE_DIRECT_URL
for this command only.
"""

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections

# Arbitrary but fixed: every replica of this project contends for the same key.
MIGRATION_LOCK_KEY = 0x636F7265  # "core"


class Command(BaseCommand):
    help = "Apply migrations while holding a PostgreSQL advisory lock (direct connection only)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--lock-timeout", type=int, default=300, help="seconds to wait for another migrate"
        )

    def handle(self, *args: Any, lock_timeout: int, **options: Any) -> None:
        connection = connections[DEFAULT_DB_ALIAS]
        if connection.vendor != "postgresql":
            raise CommandError("migrate_safely needs PostgreSQL")
        if connection.settings_dict["OPTIONS"].get("pool"):
            raise CommandError("set DATABASE_POOL_MAX_SIZE=0: the lock needs one fixed session")
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", [f"{lock_timeout}s"])
            self.stdout.write("Waiting for the migration lock...")
            cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
        try:
            call_command("migrate", interactive=False, verbosity=options["verbosity"])
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])

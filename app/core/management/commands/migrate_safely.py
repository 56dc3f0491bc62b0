"""`migrate` under a PostgreSQL session advisory lock, so that replicas starting at once are safe,
and the application's own database role kept to what the app needs.

Session advisory locks do not survive PgBouncer's transaction pooling, so this must run on a
direct connection to PostgreSQL as the owner: the release script points DATABASE_URL at
DATABASE_DIRECT_URL for this command and passes the app's URL as APP_DATABASE_URL.

The app role (user and password of APP_DATABASE_URL) may read and write rows, nothing more: no
superuser, no CREATE in the schema, no DDL (tables belong to the owner), no pg_authid.
"""

import base64
import hashlib
import hmac
import os
import secrets
from typing import Any
from urllib.parse import unquote, urlsplit

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from psycopg import sql

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
        app_role = _app_role(os.environ.get("APP_DATABASE_URL", ""), connection.settings_dict)
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('lock_timeout', %s, false)", [f"{lock_timeout}s"])
            self.stdout.write("Waiting for the migration lock...")
            cursor.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
            # A migration waiting this long for a table's lock fails (and the deploy with it)
            # rather than queue every query of the running app behind it.
            cursor.execute("SELECT set_config('lock_timeout', '10s', false)")
        try:
            if app_role:
                self._provision(connection, *app_role)
            if _pending(connection):
                call_command("migrate", interactive=False, verbosity=options["verbosity"])
            else:  # skips the post_migrate handlers' queries on every start
                self.stdout.write("No migrations to apply.")
            if app_role:
                self._grant_existing(connection, app_role[0])
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])

    def _provision(self, connection: Any, role: str, password: str) -> None:
        """The role, its password, and the rights it gets on every table the owner creates."""
        owner = sql.Identifier(connection.settings_dict["USER"])
        name = sql.Identifier(role)
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role])
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL("CREATE ROLE {} LOGIN").format(name))
                self.stdout.write(f"Created the app role {role}")
            secret = sql.Literal(scram_sha256(password))  # never the password itself in a log
            for statement in (
                sql.SQL(
                    "ALTER ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                    "NOREPLICATION NOBYPASSRLS PASSWORD {}"
                ).format(name, secret),
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(connection.settings_dict["NAME"]), name
                ),
                sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(name),
                sql.SQL("REVOKE CREATE ON SCHEMA public FROM PUBLIC, {}").format(name),
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT SELECT, "
                    "INSERT, UPDATE, DELETE ON TABLES TO {}"
                ).format(owner, name),
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA public GRANT USAGE, "
                    "SELECT ON SEQUENCES TO {}"
                ).format(owner, name),
            ):
                cursor.execute(statement)

    def _grant_existing(self, connection: Any, role: str) -> None:
        name = sql.Identifier(role)
        with connection.cursor() as cursor:
            cursor.execute(
                sql.SQL(
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
                ).format(name)
            )
            cursor.execute(
                sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(name)
            )


def _pending(connection: Any) -> bool:
    executor = MigrationExecutor(connection)
    return bool(executor.migration_plan(executor.loader.graph.leaf_nodes()))


def _app_role(url: str, owner: dict[str, Any]) -> tuple[str, str] | None:
    """(user, password) of the app's URL, when it names a role other than the owner's."""
    parts = urlsplit(url)
    if not parts.username or unquote(parts.username) == owner["USER"]:
        return None
    return unquote(parts.username), unquote(parts.password or "")


def scram_sha256(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL would store for this password (RFC 5802/7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"

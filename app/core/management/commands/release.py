"""The release step in one process (one Django start-up, not three): with --wait, the
dependencies (wait_for_dependencies), then `migrate_safely`, then `collectstatic` only when what
it would collect changed since the last run."""

import hashlib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.finders import get_finders
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

# collectstatic's own default ignore patterns.
IGNORE = ["CVS", ".*", "*~"]


class Command(BaseCommand):
    help = "Migrate (advisory-locked), then collect static files if their inputs changed."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--wait", type=float, default=0.0, help="first wait this long for the dependencies"
        )
        parser.add_argument("--database-variable", default="DATABASE_URL")

    def handle(self, *args: Any, wait: float, database_variable: str, **options: Any) -> None:
        if wait > 0:
            call_command("wait_for_dependencies", timeout=wait, database_variable=database_variable)
        call_command("migrate_safely", verbosity=options["verbosity"])
        stamp = Path(settings.STATIC_ROOT) / ".inputs.sha256"
        digest = static_inputs_digest()
        if stamp.exists() and stamp.read_text() == digest:
            self.stdout.write("Static files unchanged: not collected.")
            return
        call_command("collectstatic", interactive=False, verbosity=0)
        stamp.write_text(digest)
        self.stdout.write("Static files collected.")


def static_inputs_digest() -> str:
    """Every file collectstatic would copy (path and content), and the settings that shape the
    result: the storage (manifest or not) and STATIC_URL."""
    digest = hashlib.sha256()
    digest.update(repr((settings.STORAGES["staticfiles"], settings.STATIC_URL)).encode())
    files = sorted(
        ((path, storage) for finder in get_finders() for path, storage in finder.list(IGNORE)),
        key=lambda found: found[0],
    )
    for path, storage in files:
        digest.update(path.encode() + b"\0")
        with storage.open(path) as handle:
            digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()

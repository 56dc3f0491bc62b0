"""Script hygiene the linters do not check (strict mode, exec). The linters themselves run from
.pre-commit-config.yaml (`make lint`, which `make test` runs first)."""

from pathlib import Path

import pytest
from identify.identify import tags_from_path

from tests.stack_env import REPO_DIR


def shell_scripts() -> list[Path]:
    roots = [REPO_DIR / "deployments", REPO_DIR / ".ci"]
    return sorted(
        path
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and path.read_bytes().startswith((b"#!/usr/bin/env bash", b"#!/bin/sh"))
    )


def test_there_are_scripts_to_check() -> None:
    names = {str(p.relative_to(REPO_DIR)) for p in shell_scripts()}
    assert "deployments/compose/django/entrypoint" in names
    assert "deployments/compose/django/celery/beat/start" in names
    assert ".ci/run" in names


def test_the_shellcheck_hook_sees_every_script() -> None:
    """pre-commit picks shellcheck's files by type (identify: an executable with a shell
    shebang), not by name: every script must be typed shell."""
    untyped = [p for p in shell_scripts() if "shell" not in tags_from_path(str(p))]
    assert untyped == []


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: str(p.relative_to(REPO_DIR)))
def test_script_uses_strict_mode_and_execs_its_process(script: Path) -> None:
    text = script.read_text()
    posix = text.startswith("#!/bin/sh")  # for images without bash (certbot's)
    assert ("set -eu" if posix else "set -Eeuo pipefail") in text
    assert script.stat().st_mode & 0o111, "executable"
    if script.name in {"start", "start-dev", "entrypoint"}:
        logical = text.replace("\\\n", " ").splitlines()
        last = [line for line in logical if line.strip() and not line.startswith("#")][-1]
        assert last.lstrip().startswith("exec "), f"{script} must end by exec-ing its process"

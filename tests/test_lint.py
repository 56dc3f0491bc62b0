"""Lint is part of the suite: ruff (lint + format), shellcheck on every script, script hygiene."""

import subprocess
from pathlib import Path

import pytest

from tests.stack_env import REPO_DIR

BIN = REPO_DIR / ".venv" / "bin"


def shell_scripts() -> list[Path]:
    roots = [REPO_DIR / "deployments", REPO_DIR / ".ci"]
    return sorted(
        path
        for root in roots
        for path in root.rglob("*")
        if path.is_file() and path.read_bytes().startswith((b"#!/usr/bin/env bash", b"#!/bin/sh"))
    )


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO_DIR, capture_output=True, text=True, check=False)


def test_ruff_lint() -> None:
    result = run(str(BIN / "ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run(str(BIN / "ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_there_are_scripts_to_check() -> None:
    names = {str(p.relative_to(REPO_DIR)) for p in shell_scripts()}
    assert "deployments/compose/django/entrypoint" in names
    assert "deployments/compose/django/celery/beat/start" in names
    assert ".ci/run" in names


def test_shellcheck_every_script() -> None:
    result = run(str(BIN / "shellcheck"), "--severity=style", *map(str, shell_scripts()))
    assert result.returncode == 0, result.stdout + result.stderr


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

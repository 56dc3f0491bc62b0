"""The native runner's own logic (deployments/native/stack.py), on the file system only."""

import os

import stack


def test_generated_secrets_are_private_from_the_first_byte(tmp_path, monkeypatch) -> None:
    """Created 0600, not widened by the umask and narrowed afterwards: with chmod disabled,
    only the mode the file was created with can make it private."""
    monkeypatch.setattr(os, "chmod", lambda *args, **kwargs: None)
    monkeypatch.setattr(os, "fchmod", lambda *args, **kwargs: None)
    previous = os.umask(0)
    try:
        stack._ensure_secrets(tmp_path / "secrets.env")
    finally:
        os.umask(previous)
    path = tmp_path / "secrets.env"
    assert path.stat().st_mode & 0o777 == 0o600
    assert {line.split("=")[0] for line in path.read_text().splitlines()} == set(
        stack.GENERATED_SECRETS
    )

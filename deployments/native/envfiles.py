"""The native stack's environment, in layers: the shell > .env.native > STACK_DIR/secrets.env >
dev.env (make dev) > defaults.env. Earlier sources win; later files may refer to earlier values as
${NAME}. The local stack's secrets are generated once, into STACK_DIR."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
from pathlib import Path

from dotenv import dotenv_values

REPO_DIR = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DEFAULTS_FILE = HERE / "defaults.env"
DEV_FILE = HERE / "dev.env"  # `make dev` (STACK_MODE=dev): development settings over the defaults
GENERATED_SECRETS = (
    "SECRET_KEY",
    "POSTGRES_PASSWORD",
    "PGBOUNCER_ADMIN_PASSWORD",
    "FLOWER_PASSWORD",
    "DIAGNOSTICS_TOKEN",
    "REDIS_BROKER_PASSWORD",
    "REDIS_CACHE_PASSWORD",
    "APP_DB_PASSWORD",
)


class StackError(Exception):
    """A failure the user can act on; printed without a traceback."""


def stack_dir() -> Path:
    return Path(os.environ.get("STACK_DIR", REPO_DIR / "var")).resolve()


def ensure_secrets(path: Path) -> None:
    """Generate the local stack's secrets once; they stay in STACK_DIR (never committed)."""
    existing = dotenv_values(path) if path.exists() else {}
    missing = [name for name in GENERATED_SECRETS if not existing.get(name)]
    if not missing:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600 from the first byte (not chmodded afterwards): no moment when others may read it.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # a file left by an older version may be wider
        for name in missing:
            out.write(f"{name}={secrets.token_urlsafe(48 if name == 'SECRET_KEY' else 24)}\n")


def load_env() -> dict[str, str]:
    """The stack's environment, every layer resolved."""
    if os.environ.get("STACK_ENV_LOADED") == str(stack_dir()):
        return dict(os.environ)  # already resolved by an outer `stack.py run`
    state = stack_dir()
    env = dict(os.environ)
    env.setdefault("REPO_DIR", str(REPO_DIR))
    env["STACK_DIR"] = str(state)
    secrets_file = state / "secrets.env"
    ensure_secrets(secrets_file)
    user_file = REPO_DIR / ".env.native"
    user_set = set(env)
    # The mode `up` was last run in (make up: production, make dev: dev), unless given.
    mode_file = state / "run" / "mode"
    env.setdefault(
        "STACK_MODE", mode_file.read_text().strip() if mode_file.exists() else "production"
    )
    # Likewise whether it runs the monitoring services (make up MONITORING=1).
    monitoring_file = state / "run" / "monitoring"
    env.setdefault(
        "MONITORING", monitoring_file.read_text().strip() if monitoring_file.exists() else "0"
    )
    dev = [DEV_FILE] if env.get("STACK_MODE") == "dev" else []
    for path in (user_file, secrets_file, *dev, DEFAULTS_FILE):
        if not path.exists():
            continue
        values = dotenv_values(path, interpolate=False)
        for key, raw in values.items():
            if raw is not None:
                env.setdefault(key, expand(raw, env))
        if path == user_file:
            user_set |= set(values)
    env["PATH"] = os.pathsep.join(
        [str(REPO_DIR / ".venv" / "bin"), _postgres_bindir(), env["PATH"]]
    )
    env["STACK_EXTERNAL_DATABASE"] = "1" if "DATABASE_URL" in user_set else ""
    # The accounts supervisord runs the programs as (supervisord.conf's `user`): only root can
    # switch, so anyone else runs every program as themselves.
    if os.geteuid() == 0:
        env.setdefault("STACK_USER", "core")
        env["STACK_POSTGRES_USER"] = "postgres"  # initdb, postgres and pgbouncer refuse root
    else:
        env["STACK_USER"] = env["STACK_POSTGRES_USER"] = pwd.getpwuid(os.geteuid()).pw_name
    env["STACK_ENV_LOADED"] = str(state)
    return env


def expand(value: str, env: dict[str, str]) -> str:
    """Replace ${NAME} with its value in env (the earlier, higher-priority sources)."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in env:
            raise StackError(f"{value!r} refers to ${{{name}}}, which is not set")
        return env[name]

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lookup, value)


def _postgres_bindir() -> str:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    return str(candidates[0]) if candidates else ""


def config_hash(env: dict[str, str], conf: str) -> str:
    """The stack's configuration: every variable its env files name, as resolved (a shell value
    included), and the supervisord config. Other shell variables (a terminal's, make's) are not
    configuration: `make up` from another shell does not restart the stack."""
    state = Path(env["STACK_DIR"])
    files = (DEFAULTS_FILE, DEV_FILE, state / "secrets.env", REPO_DIR / ".env.native")
    names = {"STACK_MODE", "MONITORING"}
    for path in files:
        if path.exists():
            names |= set(dotenv_values(path, interpolate=False))
    payload = "\n".join(f"{k}={env.get(k)}" for k in sorted(names)) + conf
    return hashlib.sha256(payload.encode()).hexdigest()

"""Preparing the machine for a stack: its ports free, its accounts, its state directories (owned
by the account that writes them when started as root)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from pathlib import Path

from envfiles import REPO_DIR, StackError
from programs import Service


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_stack_user(name: str) -> pwd.struct_passwd:
    """The unprivileged account web, the Celery processes, Redis and nginx run as (root only)."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(name)


def chown_tree(directory: Path, account: pwd.struct_passwd) -> None:
    for item in [directory, *directory.rglob("*")]:
        if item.stat().st_uid != account.pw_uid:
            os.chown(item, account.pw_uid, account.pw_gid, follow_symlinks=False)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def check_ports(env: dict[str, str], services: list[Service]) -> None:
    ports = [(s, variable, env.get(variable, "")) for s in services for variable in s.ports]
    for service, variable, value in ports:
        if not value.isdigit():
            raise StackError(f"{variable}={value!r} is not a port number ({service.name})")
    for service, variable, value in ports:
        # A stack stopped a moment ago may still be releasing its sockets: allow a few seconds.
        deadline = time.monotonic() + 5
        while not port_free(int(value)) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not port_free(int(value)):
            raise StackError(
                f"port {value} ({variable}, for {service.name}) is already in use by another "
                f"process; free it or set {variable} to another port (shell or .env)"
            )


def make_traversable(path: Path) -> None:
    """Let the unprivileged users (postgres, nginx workers) reach the checkout's files."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            directory.chmod(mode | 0o001)


def prepare_dirs(env: dict[str, str], services: list[Service]) -> None:
    state = Path(env["STACK_DIR"])
    for directory in (state / "log", state / "run"):
        directory.mkdir(parents=True, exist_ok=True)
    # What the stack's user writes: heartbeats, Redis data, files, nginx's config, TLS, ACME.
    stack_dirs = [
        Path(env[name])
        for name in (
            "HEARTBEAT_DIR",
            "REDIS_DATA_DIR",
            "STATIC_ROOT",
            "MEDIA_ROOT",
            "NGINX_CONF_DIR",
            "NGINX_RUN_DIR",
            "ACME_ROOT",
            "BACKUP_DIR",
            "METRICS_DIR",
            "PROMETHEUS_CONF_DIR",
            "PROMETHEUS_DATA_DIR",
        )
    ]
    stack_dirs += [Path(env["TLS_CERT"]).parent, Path(env["TLS_KEY"]).parent]
    if env.get("MAIL_DIR"):  # make dev's mail sink
        stack_dirs.append(Path(env["MAIL_DIR"]))
    for directory in stack_dirs:
        directory.mkdir(parents=True, exist_ok=True)
    postgres_dirs = [Path(env["PGBOUNCER_CONF_DIR"])]
    if any(s.name == "postgres" for s in services):
        postgres_dirs += [Path(env["PGDATA"]).parent, Path(env["POSTGRES_SOCKET_DIR"])]
    for directory in postgres_dirs:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if is_root():
        make_traversable(state)
        make_traversable(REPO_DIR / "deployments")
        make_traversable(REPO_DIR / ".venv")
        # The virtualenv's interpreter may live in root's home (pyenv): let the user reach it.
        make_traversable(Path(os.path.realpath(REPO_DIR / ".venv" / "bin" / "python")).parent)
        for directory in postgres_dirs:
            chown_tree(directory, pwd.getpwnam("postgres"))
        user = ensure_stack_user(env["STACK_USER"])
        for directory in set(stack_dirs):
            if directory.is_relative_to(state):  # never someone else's files (e.g. /etc)
                chown_tree(directory, user)

"""The stack's services: the programs of supervisord.conf (one table for supervisord and this
runner), which of them a run starts, and their healthchecks."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
from dataclasses import dataclass

from envfiles import HERE, REPO_DIR, StackError

CONF_FILE = HERE / "supervisord.conf"  # the services: commands, users, stops, healthchecks
DJANGO_ENTRYPOINT = str(REPO_DIR / "deployments" / "compose" / "django" / "entrypoint")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Service:
    """A program of supervisord.conf, with what stack.py reads of it."""

    name: str
    command: tuple[str, ...]
    healthcheck: tuple[str, ...]
    ports: tuple[str, ...] = ()  # the variables naming the ports it listens on
    start_timeout: int = 60
    stop_signal: str = "TERM"
    stop_wait: int = 10


def all_services(env: dict[str, str]) -> list[Service]:
    """Every program of supervisord.conf, in start order, its values expanded with env."""
    parser = configparser.RawConfigParser()
    parser.read_string(CONF_FILE.read_text())
    programs = []
    for section in parser.sections():
        if not section.startswith("program:"):
            continue
        name = section.split(":", 1)[1]

        def value(key: str, default: str = "", name: str = name, section: str = section) -> str:
            raw = parser.get(section, key, fallback=default)
            expansions = {**{f"ENV_{k}": v for k, v in env.items()}, "program_name": name}
            try:
                return re.sub(r"%\((\w+)\)s", lambda m: expansions[m.group(1)], raw)
            except KeyError as missing:
                raise StackError(f"{CONF_FILE.name} [{section}] needs {missing}") from None

        service = Service(
            name,
            tuple(shlex.split(value("command"))),
            tuple(shlex.split(value("health_check"))),
            ports=tuple(value("ports").split()),
            start_timeout=int(value("health_timeout", "60")),
            stop_signal=value("stopsignal", "TERM"),
            stop_wait=int(value("stopwaitsecs", "10")),
        )
        programs.append((int(value("priority", "999")), service))
    return [service for _, service in sorted(programs, key=lambda item: item[0])]


def services_for(env: dict[str, str]) -> list[Service]:
    """The programs this run starts: no local database when the settings point at an external
    one, the mail sink in development only, Prometheus and the exporters with MONITORING=1."""
    skip = set()
    if env.get("STACK_EXTERNAL_DATABASE"):
        skip |= {"postgres", "pgbouncer"}
    elif env.get("POSTGRES_HOST", "127.0.0.1") not in LOOPBACK:
        skip.add("postgres")
    if env.get("STACK_MODE") != "dev":
        skip.add("mail")
    monitoring = env.get("MONITORING") == "1"
    services = [
        s
        for s in all_services(env)
        if s.name.removesuffix("_exporter") not in skip
        and (monitoring or not (s.name == "prometheus" or s.name.endswith("_exporter")))
    ]
    if only := {name for name in env.get("STACK_SERVICES", "").split(",") if name}:
        services = [s for s in services if s.name in only]  # a subset (make test-fast)
    return services


def run_healthcheck(service: Service, env: dict[str, str]) -> tuple[bool, str]:
    try:
        result = subprocess.run(
            list(service.healthcheck),
            env=env,
            cwd=env["APP_DIR"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, "healthcheck timed out after 10s"
    return result.returncode == 0, (result.stdout + result.stderr).strip()

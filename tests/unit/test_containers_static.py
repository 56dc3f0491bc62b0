"""Container definitions, checked without an engine: hadolint, `compose config`, and that the
containers run exactly the scripts the native runner runs."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import programs
from tests.stack_env import REPO_DIR, STACK_ENV

COMPOSE_BIN = (
    REPO_DIR / ".venv" / "lib" / "python3.13" / "site-packages" / "compose" / "docker-compose"
)
DOCKERFILES = sorted((REPO_DIR / "deployments" / "compose").glob("*/Dockerfile"))
SCRIPT_PREFIX = "/deployments/compose/"
# The native runner's programs in production (the test stack's env), but make dev's mail sink:
# compose's development stack has Mailpit instead.
NATIVE_SERVICES = [s for s in programs.all_services(STACK_ENV) if s.name != "mail"]


def compose(env_file: str, *args: str, files: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    file_args = [arg for name in files for arg in ("-f", name)]
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "ENV_FILE": env_file}
    return subprocess.run(
        [str(COMPOSE_BIN), "--env-file", env_file, *file_args, *args],
        cwd=REPO_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def resolved(env_file: str, files: tuple[str, ...] = (), profile: str = "") -> dict:
    profiles = ("--profile", profile) if profile else ()
    result = compose(env_file, *profiles, "config", "--format", "yaml", files=files)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_dockerfiles_exist() -> None:
    names = {p.parent.name for p in DOCKERFILES}
    assert {"django", "pgbouncer", "nginx"} <= names


@pytest.mark.parametrize(
    ("env_file", "files", "profile"),
    [
        (".env.prod.example", ("docker-compose.yml",), ""),
        (".env.example", (), ""),
        (
            ".env.prod.example",
            ("docker-compose.yml", "deployments/containers-harness/pebble.yml"),
            "",
        ),
        (".env.prod.example", ("docker-compose.yml",), "monitoring"),
    ],
    ids=["prod", "dev", "prod+pebble (test only)", "prod+monitoring"],
)
def test_compose_config_is_valid(env_file: str, files: tuple[str, ...], profile: str) -> None:
    result = compose(
        env_file, *(("--profile", profile) if profile else ()), "config", "-q", files=files
    )
    assert result.returncode == 0, result.stderr


def test_dev_stack_is_selected_by_the_dev_env_file() -> None:
    services = resolved(".env.example")["services"]
    assert services["web"]["command"][-1].endswith("start-dev")
    assert "mailpit" in services


def test_missing_production_secret_is_named(tmp_path: Path) -> None:
    env_file = tmp_path / "prod.env"
    lines = (REPO_DIR / ".env.prod.example").read_text().splitlines()
    env_file.write_text("\n".join(x for x in lines if not x.startswith("SECRET_KEY=")) + "\n")
    result = compose(str(env_file), "config", "-q", files=("docker-compose.yml",))
    assert result.returncode != 0
    assert "SECRET_KEY is required" in result.stderr


def _container_scripts(service: dict) -> set[str]:
    words = [*(service.get("entrypoint") or []), *(service.get("command") or [])]
    words += service.get("healthcheck", {}).get("test", [])
    return {w[len(SCRIPT_PREFIX) :] for w in words if str(w).startswith(SCRIPT_PREFIX)}


def test_containers_and_native_runner_run_the_same_scripts() -> None:
    prod = resolved(".env.prod.example", ("docker-compose.yml",), "monitoring")["services"]
    in_containers: set[str] = set()
    for service in prod.values():
        in_containers |= _container_scripts(service)
    for dockerfile in DOCKERFILES:  # the images' CMD, ENTRYPOINT and HEALTHCHECK
        in_containers |= set(re.findall(r'"/deployments/compose/([^"]+)"', dockerfile.read_text()))
    compose_root = REPO_DIR / "deployments" / "compose"
    for script in in_containers:
        assert (compose_root / script).is_file(), f"compose runs missing {script}"
    native: set[str] = set()
    for service in NATIVE_SERVICES:
        for word in (*service.command, *service.healthcheck):
            if word.startswith(str(compose_root)):
                native.add(str(Path(word).relative_to(compose_root)))
    # Everything the native runner runs, the containers run too, except postgres/start: the db
    # container uses the official image's entrypoint, with the same postgresql.conf.
    assert native - in_containers == {"postgres/start"}


def test_both_runners_check_and_stop_each_service_the_same_way() -> None:
    """One healthcheck, stop signal and grace per service: each program of the native runner's
    supervisord.conf has compose's healthcheck test (the same script and arguments), its
    stop_signal (else its image's STOPSIGNAL, else SIGTERM) and its stop_grace_period."""
    services = resolved(".env.prod.example", ("docker-compose.yml",), "monitoring")["services"]
    compared = []
    for native in NATIVE_SERVICES:
        name = {"postgres": "db"}.get(native.name, native.name)
        service = services[name]
        signal = service.get("stop_signal")
        if signal is None and "build" in service:
            dockerfile = Path(service["build"]["context"]) / service["build"]["dockerfile"]
            lines = [
                line.split()[1]
                for line in dockerfile.read_text().splitlines()
                if line.startswith("STOPSIGNAL ")
            ]
            signal = lines[-1] if lines else None
        grace = service["stop_grace_period"]
        assert grace.endswith("s") and grace[:-1].isdigit(), (name, grace)
        compose = (signal or "SIGTERM", int(grace[:-1]))
        assert compose == (f"SIG{native.stop_signal}", native.stop_wait), native.name
        kind, script, *args = service["healthcheck"]["test"]
        assert kind == "CMD" and script.startswith(SCRIPT_PREFIX), (name, script)
        in_repo = str(REPO_DIR / "deployments" / "compose" / script[len(SCRIPT_PREFIX) :])
        assert native.healthcheck == (in_repo, *args), native.name
        compared.append(native.name)
    assert len(compared) == len(NATIVE_SERVICES) == 18


def test_the_seed_container_name_is_the_console_and_web_scales() -> None:
    prod = resolved(".env.prod.example", ("docker-compose.yml",))["services"]
    # A fixed name blocks `--scale web=3`: web has none; django_app is web's image and settings.
    assert "container_name" not in prod["web"] and "container_name" not in prod["events"]
    assert prod["web"]["deploy"]["replicas"] == 1
    console = prod["django_app"]
    assert console["container_name"] == "django_app"
    assert console["image"] == prod["web"]["image"]
    web_server_only = {"FORWARDED_ALLOW_IPS", "RUN_RELEASE", "DIAGNOSTICS_TOKEN"}
    assert console["environment"].keys() == prod["web"]["environment"].keys() - web_server_only
    assert console["volumes"] == prod["web"]["volumes"]
    published = {name for name, svc in prod.items() if svc.get("ports")}
    assert published == {"nginx"}
    for name, svc in prod.items():
        if name not in {"release"}:
            assert svc.get("restart") == "unless-stopped", name
        if name not in {"release", "certbot"}:
            assert "healthcheck" in svc, name
        # An explicit stop timeout: the deploy script stops old replicas with it.
        assert svc.get("stop_grace_period"), name
    assert "proxy" not in prod["db"]["networks"] and "proxy" not in prod["pgbouncer"]["networks"]
    assert prod["nginx"]["environment"]["NGINX_RESOLVER"] == "127.0.0.11"


def test_dev_ports_are_published_on_loopback_only() -> None:
    dev = resolved(".env.example")["services"]
    published = {name: svc["ports"] for name, svc in dev.items() if svc.get("ports")}
    assert {"web", "flower", "db", "mailpit"} <= set(published)
    for name, ports in published.items():
        if name == "nginx":
            continue  # the site itself, as in production
        assert all(port.get("host_ip") == "127.0.0.1" for port in ports), (name, ports)


def test_only_the_proxy_network_may_forward_client_addresses() -> None:
    config = resolved(".env.prod.example", ("docker-compose.yml",))
    subnet = config["networks"]["proxy"]["ipam"]["config"][0]["subnet"]
    assert config["services"]["web"]["environment"]["FORWARDED_ALLOW_IPS"] == subnet
    assert "*" not in subnet


def test_each_redis_gets_only_its_own_password() -> None:
    services = resolved(".env.prod.example", ("docker-compose.yml",))["services"]
    assert set(services["redis_broker"]["environment"]) == {"REDIS_BROKER_PASSWORD"}
    assert set(services["redis_cache"]["environment"]) == {"REDIS_CACHE_PASSWORD"}
    for name in ("web", "celery_worker", "celery_beat", "flower", "release"):
        environment = services[name]["environment"]
        assert environment["DATABASE_URL"].startswith("postgres://core_app:"), name
        assert "@redis_broker" in environment["CELERY_BROKER_URL"], name
        assert environment["CELERY_BROKER_URL"].startswith("redis://broker:"), name


def test_every_service_runs_with_least_privilege() -> None:
    services = resolved(".env.prod.example", ("docker-compose.yml",))["services"]
    django = {"release", "web", "celery_worker", "celery_beat", "flower"}
    for name, service in services.items():
        if name == "certbot":
            continue
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("mem_limit"), name
        if name in django | {"redis_broker", "redis_cache"}:
            assert service.get("read_only") is True, name
            assert service.get("cap_drop") == ["ALL"], name
            assert service.get("pids_limit"), name
        if name in django | {"pgbouncer"}:
            assert service.get("cap_drop") == ["ALL"], name
    dockerfile = (REPO_DIR / "deployments/compose/django/Dockerfile").read_text()
    prod_stage = dockerfile.split("AS prod", 1)[1]
    assert "ENV DJANGO_ENV=production" in prod_stage and "USER ${UID}:${GID}" in prod_stage


def test_each_service_gets_only_the_secrets_it_needs(tmp_path: Path) -> None:
    # Every placeholder a value of its own, so that each secret can be traced.
    lines = (REPO_DIR / ".env.prod.example").read_text().splitlines()
    unique = [re.sub(r"^([A-Z_]+)=<random-password>$", r"\1=secret-\1", line) for line in lines]
    env_file = tmp_path / "prod.env"
    env_file.write_text("\n".join(unique) + "\n")
    services = resolved(str(env_file), ("docker-compose.yml",))["services"]
    assert all("env_file" not in service for service in services.values())

    def holders(secret: str) -> set[str]:
        def has(service: dict) -> bool:
            return any(
                secret in str(value) for value in (service.get("environment") or {}).values()
            )

        return {name for name, service in services.items() if has(service)}

    owner_url = services["release"]["environment"]["DATABASE_DIRECT_URL"]
    assert holders(owner_url) == {"release"}  # the owner's password: migrations only
    assert holders(services["flower"]["environment"]["FLOWER_BASIC_AUTH"]) == {"flower"}
    assert "DIAGNOSTICS_TOKEN" in services["web"]["environment"]
    assert "DIAGNOSTICS_TOKEN" not in services["celery_worker"]["environment"]
    admin = services["pgbouncer"]["environment"]["PGBOUNCER_ADMIN_PASSWORD"]
    assert holders(admin) == {"pgbouncer"}
    # The settings still arrive: what .env sets reaches every Django service.
    for name in ("web", "celery_worker", "celery_beat", "flower", "release"):
        assert services[name]["environment"]["ALLOWED_HOSTS"], name


def test_monitoring_services_get_only_their_servers_credentials(tmp_path: Path) -> None:
    lines = (REPO_DIR / ".env.prod.example").read_text().splitlines()
    env_file = tmp_path / "prod.env"
    env_file.write_text(
        "\n".join(
            re.sub(r"<random-password>", lambda m: f"secret{len(m.string)}", x) for x in lines
        )
    )
    services = resolved(str(env_file), ("docker-compose.yml",), "monitoring")["services"]

    def holders(variable: str) -> set[str]:
        secret = services[{"FLOWER_BASIC_AUTH": "flower"}.get(variable, "pgbouncer")][
            "environment"
        ][variable]
        return {
            name
            for name, service in services.items()
            if any(secret in str(v) for v in (service.get("environment") or {}).values())
        }

    assert holders("FLOWER_BASIC_AUTH") == {"flower", "prometheus"}
    assert holders("PGBOUNCER_ADMIN_PASSWORD") == {"pgbouncer", "pgbouncer_exporter"}
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"nginx", "prometheus", "grafana"}
    for name in ("prometheus", "grafana"):
        assert all(port["host_ip"] == "127.0.0.1" for port in published[name]), name
    for name, service in services.items():
        if service.get("image") == "core-monitoring:latest":
            assert service["read_only"] is True and service["cap_drop"] == ["ALL"], name


def test_only_the_django_image_can_initialise_the_media_volume() -> None:
    """Docker gives an empty named volume the owner of the mount point in the first image that
    mounts it; backup's /media (the postgres image's) is root's, and with it first the app could
    not write an upload (seen on Swarm). Every other image mounts media with nocopy."""
    services = resolved(".env.prod.example", ("docker-compose.yml",))["services"]
    django_image = services["web"]["image"]
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            if volume.get("source") == "media" and svc.get("image") != django_image:
                assert volume.get("volume", {}).get("nocopy") is True, name

"""Let's Encrypt's flow for real against Pebble (Let's Encrypt's own ACME test server, Debian's
package) and its mock DNS: HTTP-01 through the stack's nginx (its ACME location on the HTTP
port), the issued chain served by nginx and verified with Pebble's root, then a forced renewal
picked up by a reload while requests keep flowing, none failing."""

import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from tests.acme import NAME, RequestsFlowing, wait_for_new_certificate
from tests.conftest import NativeStack
from tests.nginx_alone import nginx_running
from tests.ports import wait_listening
from tests.stack_env import REPO_DIR

CERTIFY = REPO_DIR / "deployments" / "compose" / "certbot" / "certify"
RENEW_LOOP = CERTIFY.with_name("renew")  # the certbot service's command
PEBBLE_PORT, PEBBLE_MANAGEMENT_PORT, DNS_PORT = 14000, 15000, 8053


@dataclass
class Pebble:
    directory: str
    tls_ca: Path  # the CA of Pebble's own HTTPS endpoint
    root: Path  # Pebble's issuing root, for the certificates it issues


@pytest.fixture
def pebble(tmp_path: Path, native_stack: NativeStack) -> Iterator[Pebble]:
    for binary in ("pebble", "pebble-challtestsrv", "certbot", "openssl"):
        assert shutil.which(binary), f"{binary} is missing: `make test` installs it (Debian)"
    # Pebble serves its ACME API over HTTPS: a certificate for it from a CA made here.
    make_certs = REPO_DIR / "deployments" / "compose" / "nginx" / "make-local-certs"
    subprocess.run(
        [make_certs, tmp_path / "pebble.pem", tmp_path / "pebble.key"],
        check=True,
        capture_output=True,
    )
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{PEBBLE_PORT}",
            "managementListenAddress": f"127.0.0.1:{PEBBLE_MANAGEMENT_PORT}",
            "certificate": str(tmp_path / "pebble.pem"),
            "privateKey": str(tmp_path / "pebble.key"),
            # HTTP-01: Pebble fetches the token from nginx's HTTP port, as Let's Encrypt does.
            "httpPort": int(native_stack.env["NGINX_HTTP_PORT"]),
            "tlsPort": 5001,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
            # 10 days: under certbot's renew_before_expiry (30 days), so every certificate issued
            # here is due for renewal at once (the renewal loop's test).
            "certificateValidityPeriod": 10 * 24 * 3600,
        }
    }
    (tmp_path / "pebble.json").write_text(json.dumps(config))
    dns = subprocess.Popen(
        [
            "pebble-challtestsrv",
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-dns01",
            f"127.0.0.1:{DNS_PORT}",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            "127.0.0.1:8055",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = subprocess.Popen(
        ["pebble", "-config", str(tmp_path / "pebble.json"), "-dnsserver", f"127.0.0.1:{DNS_PORT}"],
        # No random delay before validating; no deliberately rejected nonces (5% by default:
        # certbot 2.1 retries most but not the certificate download, and then fails).
        env={"PATH": "/usr/bin:/bin", "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"},
        stdout=(tmp_path / "pebble.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_listening(PEBBLE_PORT, server)
        wait_listening(PEBBLE_MANAGEMENT_PORT, server)
        tls_ca = tmp_path / "ca.pem"  # make-local-certs leaves its CA beside the certificate
        root = httpx.get(
            f"https://127.0.0.1:{PEBBLE_MANAGEMENT_PORT}/roots/0",
            verify=ssl.create_default_context(cafile=str(tls_ca)),
        )
        (tmp_path / "pebble-root.pem").write_bytes(root.content)
        yield Pebble(f"https://127.0.0.1:{PEBBLE_PORT}/dir", tls_ca, tmp_path / "pebble-root.pem")
    finally:
        for process in (server, dns):
            process.terminate()
            process.wait(10)


def install(stack: NativeStack, live: Path) -> None:
    """What pointing TLS_CERT/TLS_KEY at certbot's live directory does, then nginx's reload."""
    shutil.copyfile(live / "fullchain.pem", stack.env["TLS_CERT"])
    shutil.copyfile(live / "privkey.pem", stack.env["TLS_KEY"])
    assert "signalled" in stack.supervisorctl("signal", "HUP", "nginx")


def certbot_env(stack: NativeStack, pebble: Pebble, tmp_path: Path) -> dict[str, str]:
    return {
        **stack.env,
        "SERVER_NAME": NAME,
        "LETSENCRYPT_EMAIL": "ops@example.test",
        "ACME_SERVER": pebble.directory,
        "CERTBOT_DIR": str(tmp_path / "letsencrypt"),
        "REQUESTS_CA_BUNDLE": str(pebble.tls_ca),
    }


def obtain(env: dict[str, str]) -> Path:
    """`certify obtain` (HTTP-01 through the test stack's nginx); certbot's live directory."""
    obtained = subprocess.run(
        [CERTIFY, "obtain"], env=env, capture_output=True, text=True, timeout=120
    )
    assert obtained.returncode == 0, obtained.stdout + obtained.stderr
    return Path(env["CERTBOT_DIR"]) / "live" / NAME


def test_issuance_and_renewal_through_nginx(
    native_stack: NativeStack, pebble: Pebble, tmp_path: Path
) -> None:
    cert, key = Path(native_stack.env["TLS_CERT"]), Path(native_stack.env["TLS_KEY"])
    saved = cert.read_bytes(), key.read_bytes()
    env = certbot_env(native_stack, pebble, tmp_path)
    try:
        live = obtain(env)
        install(native_stack, live)
        https = int(native_stack.env["NGINX_HTTPS_PORT"])
        first = wait_for_new_certificate(https, pebble.root, previous=None)
        issuer = first.issuer.rfc4514_string()
        assert "Pebble Intermediate" in issuer, issuer
        names = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [NAME]

        # Renewal while clients keep coming: the reload must not drop one of them.
        with RequestsFlowing(native_stack.base_url) as flow:
            # (Without a terminal certbot waits up to 8 minutes first, to spread the load on
            # Let's Encrypt; the renewal loop keeps that, this test does not wait.)
            renewed = subprocess.run(
                [CERTIFY, "renew", "--force-renewal", "--no-random-sleep-on-renew"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert renewed.returncode == 0, renewed.stdout + renewed.stderr
            install(native_stack, live)
            second = wait_for_new_certificate(https, pebble.root, previous=first.serial_number)
            time.sleep(1)
        assert flow.failures == [] and flow.count > 20, (flow.count, flow.failures[:3])
        assert flow.retried <= 1, flow.retried  # one reload closes this client's connection once
        assert "Pebble Intermediate" in second.issuer.rfc4514_string()
    finally:
        cert.write_bytes(saved[0])
        key.write_bytes(saved[1])
        native_stack.supervisorctl("signal", "HUP", "nginx")
        wait_for_the_local_certificate(native_stack)


def test_the_renewal_loop_and_nginx_reloads_serve_a_due_certificate_unattended(
    native_stack: NativeStack, pebble: Pebble, tmp_path: Path
) -> None:
    """What runs in production with nobody at the keyboard: the certbot service's loop
    (`renew`, every CERTBOT_RENEW_INTERVAL) renews the certificate once it is due, and an nginx
    whose TLS_CERT/TLS_KEY point into certbot's live directory (as the README says to set
    them) serves the new one after its own periodic reload (NGINX_RELOAD_INTERVAL). Nothing
    here signals nginx. Intervals of seconds instead of 12 h and 6 h."""
    env = certbot_env(native_stack, pebble, tmp_path)
    live = obtain(env)
    # Without a terminal certbot sleeps up to 8 minutes before a renewal: off, by its config.
    config = tmp_path / "xdg" / "letsencrypt"
    config.mkdir(parents=True)
    (config / "cli.ini").write_text("no-random-sleep-on-renew = true\n")
    with nginx_running(
        tmp_path / "nginx",
        "127.0.0.1:9",
        SERVER_NAME=NAME,
        TLS_CERT=str(live / "fullchain.pem"),
        TLS_KEY=str(live / "privkey.pem"),
        NGINX_RELOAD_INTERVAL="2",
    ) as base:
        port = int(base.rsplit(":", 1)[1])
        first = wait_for_new_certificate(port, pebble.root, previous=None)
        loop = subprocess.Popen(
            [RENEW_LOOP],
            env={**env, "CERTBOT_RENEW_INTERVAL": "3", "XDG_CONFIG_HOME": str(config.parent)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            second = wait_for_new_certificate(
                port, pebble.root, previous=first.serial_number, timeout=90
            )
        finally:
            loop.terminate()  # its trap: a clean exit
            output = loop.communicate(timeout=30)[0]
    assert loop.returncode == 0, output
    assert "Congratulations, all renewals succeeded" in output, output
    assert second.not_valid_after_utc > first.not_valid_after_utc


def wait_for_the_local_certificate(stack: NativeStack) -> None:
    """Leave the stack as the next test expects it: serving its own certificate again."""
    deadline = time.monotonic() + 15
    while True:
        try:
            with stack.client() as client:
                client.get("/healthz")
            return
        except httpx.ConnectError:
            assert time.monotonic() < deadline, "nginx still serves Pebble's certificate"
            time.sleep(0.2)

"""nginx behind another proxy (a load balancer, the Kubernetes Ingress controller):
NGINX_TRUSTED_PROXIES makes it take the client's address from X-Forwarded-For, but only from
those networks, so a forged header from anyone else changes nothing, and the per-address login
limit counts clients, not the proxy. The real nginx, run by its start script, in front of an
upstream that records what it was told."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.nginx_alone import Upstream, nginx_running, upstream_running


@contextmanager
def behind_proxies(tmp_path: Path, trusted: str) -> Iterator[tuple[Upstream, str]]:
    """nginx trusting `trusted` networks, its login limit at burst 2; (upstream, nginx's URL)."""
    with (
        upstream_running() as upstream,
        nginx_running(
            tmp_path,
            upstream.address,
            NGINX_TRUSTED_PROXIES=trusted,
            NGINX_LOGIN_RATE="10r/m",
            NGINX_LOGIN_BURST="2",
        ) as base,
    ):
        yield upstream, base


def get(base: str, path: str, client: str) -> int:
    headers = {"X-Forwarded-For": client, "Host": "localhost"}
    return httpx.get(base + path, headers=headers, verify=False, timeout=10).status_code


def test_a_trusted_proxy_gives_the_client_address(tmp_path) -> None:
    with behind_proxies(tmp_path, "127.0.0.0/8,10.0.0.0/8") as (upstream, base):
        assert get(base, "/", "203.0.113.7") == 200
        assert upstream.forwarded_for[-1] == "203.0.113.7"
        # The login limit (burst 2) counts each client apart behind the one proxy.
        first = [get(base, "/accounts/login/", "198.51.100.1") for _ in range(5)]
        other = get(base, "/accounts/login/", "198.51.100.2")
        assert first.count(429) >= 2 and other == 200, (first, other)


def test_a_forged_header_from_anyone_else_changes_nothing(tmp_path) -> None:
    with behind_proxies(tmp_path, "10.0.0.0/8") as (upstream, base):
        assert get(base, "/", "203.0.113.7") == 200
        assert upstream.forwarded_for[-1] == "127.0.0.1"
        # One client, whatever it claims: the limit holds.
        statuses = [get(base, "/accounts/login/", f"198.51.100.{n}") for n in range(5)]
        assert statuses.count(429) >= 2, statuses

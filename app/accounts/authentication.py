"""API token authentication with the token -> user lookup cached: one query fewer on every API
call (the main read then costs two: the page of jobs and their renditions).

The cache keeps (user, token), and the user's id apart, for TOKEN_CACHE_S under a digest of the
key, never the key itself.
Whatever should end a token's access clears its entry at once: the token deleted (a new password
revokes every token) and any save of its user (deactivated, email changed). A change that skips
signals (QuerySet.update) is seen within TOKEN_CACHE_S. Without the cache, it asks the database.
"""

import hashlib
import logging

from django.contrib.auth.models import User
from django.core.cache import cache
from redis.exceptions import RedisError
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from core.log_context import bind_user

TOKEN_CACHE_S = 60
logger = logging.getLogger(__name__)


def cache_key(key: str) -> str:
    return "auth-token:" + hashlib.sha256(key.encode()).hexdigest()


def owner_key(key: str) -> str:
    """Beside (user, token): the user's id alone, which a Redis script can read (the cache
    stores integers as they are, everything else pickled)."""
    return "auth-token-owner:" + hashlib.sha256(key.encode()).hexdigest()


def owner_redis_key(key: str) -> str:
    """The Redis key of owner_key(key): set exactly while the token is cached, so a read that
    needs only the owner (audio/api.py's job_list) trusts it as this class trusts the cache."""
    return cache.make_and_validate_key(owner_key(key))


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[User, Token]:
        user, token = self._lookup(key)
        bind_user(user)  # the request's log lines name the user
        return user, token

    def _lookup(self, key: str) -> tuple[User, Token]:
        try:
            cached = cache.get(cache_key(key))
        except RedisError as exc:
            logger.warning("token cache unavailable, asking the database: %s", exc)
            return super().authenticate_credentials(key)
        if cached is not None:
            return cached
        user, token = super().authenticate_credentials(key)
        try:
            cache.set_many({cache_key(key): (user, token), owner_key(key): user.pk}, TOKEN_CACHE_S)
        except RedisError as exc:
            logger.warning("token cache unavailable: %s", exc)
        return user, token


def forget(keys: list[str]) -> None:
    try:
        cache.delete_many([name(k) for k in keys for name in (cache_key, owner_key)])
    except RedisError as exc:  # the entries expire after TOKEN_CACHE_S
        logger.error("could not drop %d token(s) from the cache: %s", len(keys), exc)

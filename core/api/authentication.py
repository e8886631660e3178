"""Token authentication: DRF's TokenAuthentication, the user it finds kept briefly in the shared cache.

DRF's look-up (`Token.objects.select_related("user").get(key=…)`, the user's ~30 columns compiled
and built into models) was the largest part of every authenticated request's service time
(docs/BENCHMARKS.md, API). A hit rebuilds the same User from the cached column values; what keeps
the cache true is core.services.token_cache. Settings refuse a cache that is not shared between
processes (a logout in one worker must reach the others).

The cache is optional: when it fails, the look-up is DRF's own against the database, and nothing is
cached. A cached user outlives a change the cache did not hear of (QuerySet.update, or Redis failing
while the user was saved) by at most AUTH_TOKEN_CACHE_SECONDS: every entry expires that long after
it was written.
"""

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS
from redis.exceptions import RedisError
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from core.models import User
from core.services.token_cache import token_cache_key

logger = logging.getLogger("fortuna.auth")

TOKEN_CACHE_DOWN = "Token cache unavailable (%s): authenticating from the database."

_ATTNAMES = [field.attname for field in User._meta.concrete_fields]


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[User, Token]:
        seconds = settings.AUTH_TOKEN_CACHE_SECONDS
        if not seconds:
            return super().authenticate_credentials(key)
        cache_key = token_cache_key(key=key)
        try:
            values = cache.get(cache_key)
        except RedisError as exc:
            logger.warning(TOKEN_CACHE_DOWN, exc)
            return super().authenticate_credentials(key)
        if values is not None:
            user = User.from_db(DEFAULT_DB_ALIAS, _ATTNAMES, values)
            return user, Token(key=key, user=user)
        user, token = super().authenticate_credentials(key)  # DRF's errors: unknown token, inactive user
        try:
            cache.set(cache_key, [getattr(user, name) for name in _ATTNAMES], seconds)
        except RedisError as exc:
            logger.warning(TOKEN_CACHE_DOWN, exc)
        return user, token

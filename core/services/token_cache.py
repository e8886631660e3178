"""The shared cache of token -> user column values that core.api.authentication reads, and its invalidation.

The receivers are connected by CoreConfig.ready(), so every process that writes users or tokens
(web, batch, shell) drops what it changes: a token's entry when the token is deleted (logout,
account deletion), every entry of a user when the user is saved or deleted (deactivation, profile
edits) — at once and again after the commit, so a request that read the old row meanwhile cannot
leave it cached. Writes that skip signals (QuerySet.update) show after AUTH_TOKEN_CACHE_SECONDS.

A cache that fails never fails the write: the entries it could not drop expire within
AUTH_TOKEN_CACHE_SECONDS of being written (a warning is logged), the same bound as QuerySet.update.
"""

import hashlib
import logging

from django.core.cache import cache
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver
from redis.exceptions import RedisError
from rest_framework.authtoken.models import Token

from core.models import User


def token_cache_key(*, key: str) -> str:
    # A digest, so the cache never holds a usable token in its key names.
    return "auth-token:" + hashlib.sha256(key.encode()).hexdigest()


logger = logging.getLogger("fortuna.auth")

TOKEN_CACHE_NOT_CLEARED = "Cached token users not dropped (%s): they expire within AUTH_TOKEN_CACHE_SECONDS."


def _cache_delete_many(cache_keys: list[str]) -> None:
    try:
        cache.delete_many(cache_keys)
    except RedisError as exc:
        logger.warning(TOKEN_CACHE_NOT_CLEARED, exc)


def token_cache_forget(*, keys: list[str]) -> None:
    """Drop the cached users of these tokens, now and once the current transaction commits."""
    if not keys:
        return
    cache_keys = [token_cache_key(key=key) for key in keys]
    _cache_delete_many(cache_keys)
    transaction.on_commit(lambda: _cache_delete_many(cache_keys))


@receiver(post_delete, sender=Token, dispatch_uid="fortuna-token-deleted")
def _token_deleted(sender, instance: Token, **kwargs) -> None:
    token_cache_forget(keys=[instance.key])


@receiver(post_save, sender=User, dispatch_uid="fortuna-user-saved")
@receiver(post_delete, sender=User, dispatch_uid="fortuna-user-deleted")
def _user_changed(sender, instance: User, **kwargs) -> None:
    token_cache_forget(keys=list(Token.objects.filter(user_id=instance.pk).values_list("key", flat=True)))

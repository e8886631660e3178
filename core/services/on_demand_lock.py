"""The single-flight lock of on-demand generation: one holder per name across every web process.

Which lock, in order:

* the shared cache when it is Redis (REDIS_URL): an atomic add() with a TTL, seen by every process;
* PostgreSQL when the cache is not shared, or as soon as a cache call fails: a session-level advisory
  lock (pg_try_advisory_lock) on the request's own connection, taken and released outside any
  transaction. The session holds nothing else across the LLM call (no transaction, no SET), and a
  process that dies frees it with its session. It needs session-level connections: behind a pooler
  in transaction mode (PgBouncer) the lock would follow the server connection, not the request;
* SQLite (an embedded, one-server database): a lock in this process. Several gunicorn processes on
  SQLite may each generate once; the unique input hash still makes them share one stored row.

Waiting polls the non-blocking try at LOCK_POLL_SECONDS through the retry module's wait_until, so a
waiter never sits in a blocking database call or holds a transaction open.
"""

import hashlib
import logging
import math
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import DEFAULT_CACHE_ALIAS, cache, caches
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from redis.exceptions import RedisError

from core.resilience import wait_until

logger = logging.getLogger("fortuna.api")

CACHE_KEY = "fortune:on-demand-lock:{name}"
# A namespace of its own, so the key never equals the batch's run lock (core/nightly/lock.py).
ADVISORY_NAMESPACE = "fortuna:on-demand"
LOCK_POLL_SECONDS = 0.05
# The holder's work is bounded by its budget; the TTL only frees the lock of a process that died.
LOCK_TTL_MARGIN = 10
CACHE_LOCK_FAILED = "on-demand lock: the shared cache failed (%s); using the database lock instead"
# What a cache call raises when Redis is down, refuses, or does not answer in time.
CACHE_ERRORS = (RedisError, OSError)


class OnDemandLockTimeout(Exception):
    """Another request held the lock until the caller's deadline."""


def cache_is_shared() -> bool:
    """True when the default cache is Redis, seen by every web process."""
    return isinstance(caches[DEFAULT_CACHE_ALIAS], RedisCache)


def advisory_lock_key(*, name: str) -> int:
    """A signed 64-bit advisory-lock key, stable across processes and Python versions."""
    digest = hashlib.sha256(f"{ADVISORY_NAMESPACE}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _ProcessLock:
    """One process's lock per name (SQLite's fallback)."""

    _held: set[str] = set()
    _guard = threading.Lock()

    kind = "process"

    def __init__(self, name: str) -> None:
        self.name = name

    def try_acquire(self) -> bool:
        with self._guard:
            if self.name in self._held:
                return False
            self._held.add(self.name)
            return True

    def release(self) -> None:
        with self._guard:
            self._held.discard(self.name)


class _AdvisoryLock:
    """pg_try_advisory_lock on the calling thread's connection (Django's, one per thread)."""

    kind = "advisory"

    def __init__(self, name: str) -> None:
        self.key = advisory_lock_key(name=name)

    def try_acquire(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [self.key])
            (acquired,) = cursor.fetchone()
        return bool(acquired)

    def release(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [self.key])
                (released,) = cursor.fetchone()
        except Exception:  # noqa: BLE001 - whatever broke, closing the session below frees the lock
            released = False
            logger.warning("on-demand lock: advisory unlock failed", exc_info=True)
        if not released and not connection.in_atomic_block:
            # A lock left in a persistent session would block this input until the connection dies.
            connection.close()


def _database_lock(name: str) -> _ProcessLock | _AdvisoryLock:
    return _AdvisoryLock(name) if connection.vendor == "postgresql" else _ProcessLock(name)


class _CacheLock:
    """cache.add() with a TTL in Redis; on the first cache error, the database lock from then on."""

    kind = "cache"

    def __init__(self, name: str, *, ttl: int) -> None:
        self.name = name
        self.key = CACHE_KEY.format(name=name)
        self.token = uuid.uuid4().hex
        self.ttl = ttl
        self.fallback: _ProcessLock | _AdvisoryLock | None = None

    def try_acquire(self) -> bool:
        if self.fallback is None:
            try:
                return bool(cache.add(self.key, self.token, timeout=self.ttl))
            except CACHE_ERRORS as exc:
                logger.warning(CACHE_LOCK_FAILED, exc)
                self.fallback = _database_lock(self.name)
        return self.fallback.try_acquire()

    def release(self) -> None:
        if self.fallback is not None:
            self.fallback.release()
            return
        try:
            # Only our own lock: after a TTL expiry (a stalled holder) another request may hold it now.
            if cache.get(self.key) == self.token:
                cache.delete(self.key)
        except CACHE_ERRORS as exc:
            logger.warning("on-demand lock: could not release %s in the cache (%s); its TTL frees it", self.key, exc)


def on_demand_lock_for(name: str) -> _CacheLock | _AdvisoryLock | _ProcessLock:
    """The lock this deployment uses for `name` (not yet taken)."""
    if cache_is_shared():
        ttl = math.ceil(settings.FORTUNE_ON_DEMAND_TIMEOUT) + LOCK_TTL_MARGIN
        return _CacheLock(name, ttl=ttl)
    return _database_lock(name)


@contextmanager
def on_demand_lock(*, name: str, deadline: float, clock: Callable[[], float]) -> Iterator[None]:
    """Hold the single-flight lock on `name`, waiting for it until `deadline` on `clock`.

    Raises OnDemandLockTimeout when another holder keeps it that long. No transaction is open while
    the lock is held: the caller's work inside (the LLM call) runs in autocommit.
    """
    lock = on_demand_lock_for(name)
    if not wait_until(lock.try_acquire, deadline=deadline, interval=LOCK_POLL_SECONDS, clock=clock):
        raise OnDemandLockTimeout(name)
    try:
        yield
    finally:
        lock.release()

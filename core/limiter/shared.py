"""The shared backend: RateLimiter's algorithm in Redis, in-process at a share of the account while
Redis does not answer (core.limiter's docstring says which share and why)."""

import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from django.conf import settings

from core.limiter.base import (
    LEARN_SECONDS,
    LIMITER_REDIS_BACK,
    LIMITER_REDIS_DOWN,
    PEER_WINDOW,
    REDIS_KEY,
    REDIS_POOL_SIZE,
    REDIS_PROBE_SECONDS,
    REJOIN_SECONDS,
    _Limiter,
)
from core.limiter.local import RateLimiter
from core.limiter.lua import _ADJUST_LUA, _LEARN_LUA, _PAUSE_LUA, _RESERVE_LUA

logger = logging.getLogger("fortuna.limiter")

class RedisRateLimiter(_Limiter):
    """The shared backend: RateLimiter's algorithm in Redis, one Lua call per acquisition; in-process at
    a share of the limits while Redis does not answer (the module's docstring says which and why)."""

    STATE_TTL = 3600  # seconds: an idle limiter's state expires (nothing to remember after a minute)

    def __init__(
        self,
        rpm: int | None,
        *,
        url: str,
        tpm: int | None = None,
        burst: int = 1,
        reserve: float = 0.0,
        key: str = REDIS_KEY,
        fallback_processes: int | None = None,
        probe_seconds: float = REDIS_PROBE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        import redis

        super().__init__(rpm, tpm=tpm, burst=burst, reserve=reserve, clock=clock, sleep=sleep)
        self.key = key
        self.peers_key = f"{key}:peers"
        self.peer = f"{socket.gethostname()}:{os.getpid()}"
        connect, read = settings.REDIS_CONNECT_TIMEOUT, settings.REDIS_SOCKET_TIMEOUT
        # Hundreds of threads share one limiter and each call is one short script: a thread waits for a
        # free connection (a blocking pool) rather than fail at redis-py's default cap of 100, but no
        # longer than a call to a frozen Redis may take. No retry inside redis-py: the fallback is ours.
        pool = redis.BlockingConnectionPool.from_url(url, max_connections=REDIS_POOL_SIZE, timeout=connect + read,
                                                     socket_timeout=read, socket_connect_timeout=connect,
                                                     health_check_interval=30)
        self.redis = redis.Redis(connection_pool=pool)
        self._reserve_script = self.redis.register_script(_RESERVE_LUA)
        self._adjust_script = self.redis.register_script(_ADJUST_LUA)
        self._learn_script = self.redis.register_script(_LEARN_LUA)
        self._pause_script = self.redis.register_script(_PAUSE_LUA)
        self.fallback_processes = max(1, int(
            settings.OPENAI_LIMITER_FALLBACK_PROCESSES if fallback_processes is None else fallback_processes))
        self.probe_seconds = probe_seconds
        self._state = threading.Lock()
        self._local: RateLimiter | None = None  # while Redis is down, and for REJOIN_SECONDS after
        self._down_since: float | None = None
        self._probe_at = 0.0
        self._rejoin_until = 0.0
        self._peers = 1  # processes that shared the account at the last answer
        self._switches = 0

    # --- Redis, or the in-process share while it does not answer ------------------------------
    @property
    def degraded(self) -> bool:
        """True while this process limits itself in-process because Redis did not answer."""
        return self._down_since is not None

    def _epoch(self) -> int:
        return self._switches

    def _fallback(self) -> RateLimiter | None:
        """The in-process limiter to use instead of Redis now, or None to ask Redis (one caller per
        probe period asks while it is down)."""
        if self._down_since is None:
            return None
        with self._state:
            if self._down_since is None:
                return None
            now = self._clock()
            if now < self._probe_at:
                return self._local
            self._probe_at = now + self.probe_seconds
            return None

    def _went_down(self, error: Exception) -> RateLimiter:
        with self._state:
            now = self._clock()
            self._probe_at = now + self.probe_seconds
            if self._down_since is None:
                share = max(self._peers, self.fallback_processes)
                rpm = max(1, self.rpm // share) if self.rpm else None
                tpm = max(1, self.tpm // share) if self.tpm else None
                self._local = RateLimiter(rpm, tpm=tpm, burst=self.burst, reserve=self.reserve, clock=self._clock,
                                          sleep=self._sleep)
                self._down_since = now
                self._switches += 1
                logger.warning("fortune limiter: %s", LIMITER_REDIS_DOWN.format(
                    error=str(error) or type(error).__name__, share=share, rpm=rpm or "no", tpm=tpm or "no"))
            return self._local

    def _answered(self) -> RateLimiter | None:
        """Redis answered: back to it if it was down. The in-process limiter while rejoining, else None."""
        if self._down_since is None and self._local is None:
            return None
        with self._state:
            now = self._clock()
            if self._down_since is not None:
                logger.warning("fortune limiter: %s", LIMITER_REDIS_BACK.format(seconds=now - self._down_since))
                self._down_since = None
                self._rejoin_until = now + REJOIN_SECONDS
                self._switches += 1
            if now >= self._rejoin_until:
                self._local = None
            return self._local

    def _reserve(self, *, lane: str, tokens: int, max_wait: float | None) -> tuple[str, float] | None:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            return local._reserve(lane=lane, tokens=tokens, max_wait=max_wait)
        try:
            charged, wait, peers = self._reserve_script(keys=[self.key, self.peers_key], args=[
                lane, tokens, -1 if max_wait is None else f"{max_wait:.6f}", self.rpm or 0, self.tpm or 0,
                self.burst, f"{self.reserve:.6f}", self.STATE_TTL, self.peer, PEER_WINDOW,
            ])
        except RedisError as exc:
            return self._went_down(exc)._reserve(lane=lane, tokens=tokens, max_wait=max_wait)
        self._peers = int(peers)
        wait = float(wait)
        if wait < 0:
            return None
        charged = charged.decode() if isinstance(charged, bytes) else charged
        rejoining = self._answered()
        if rejoining is not None:
            # Peers may still be in-process: this process keeps to its share as well for a while.
            local = rejoining._reserve(lane=charged, tokens=tokens, max_wait=max_wait)
            if local is None:
                return None
            wait = max(wait, local[1])
        return charged, wait

    def _pause_left(self) -> float:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            return local._pause_left()
        try:
            left = float(self._pause_script(keys=[self.key]))
        except RedisError as exc:
            return self._went_down(exc)._pause_left()
        rejoining = self._answered()
        return left if rejoining is None else max(left, rejoining._pause_left())

    def _adjust(self, *, lane: str, tokens: int) -> None:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            local._adjust(lane=lane, tokens=tokens)
            return
        try:
            self._adjust_script(keys=[self.key], args=[lane, tokens, self.tpm or 0, f"{self.reserve:.6f}"])
        except RedisError as exc:
            self._went_down(exc)  # a reservation Redis held is gone with it: nothing to correct
            return
        self._answered()

    def _learn(self, *, pause: float, rpm: int | None, tpm: int | None) -> None:
        from redis.exceptions import RedisError

        local = self._fallback()
        if local is not None:
            local._learn(pause=pause, rpm=rpm, tpm=tpm)
            return
        try:
            self._learn_script(keys=[self.key],
                               args=[f"{pause:.6f}", rpm or 0, tpm or 0, LEARN_SECONDS, self.STATE_TTL])
        except RedisError as exc:
            self._went_down(exc)._learn(pause=pause, rpm=rpm, tpm=tpm)
            return
        rejoining = self._answered()
        if rejoining is not None:
            rejoining._learn(pause=pause, rpm=rpm, tpm=tpm)

    def clear(self) -> None:
        """Forget the shared state (tests, or after changing the account's limits)."""
        self.redis.delete(self.key, self.peers_key)

    def close(self) -> None:
        self.redis.close()
        self.redis.connection_pool.disconnect()  # a pool passed in is not closed with its client

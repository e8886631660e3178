"""A worker process's generator threads: they only call the provider (network I/O, never the ORM),
so database connections scale with chunk slots, not with calls in flight. Threads rather than
AsyncOpenAI: the sync provider and retry module serve every executor, and threads cost less client
CPU per request at 256 in flight (bench/scale.py --clients-only)."""

import os
import queue
import threading
from collections.abc import Callable

from django.conf import settings


class GenerationPool:
    """Process-wide daemon threads: FORTUNE_CELERY_INFLIGHT calls in flight per worker process, shared
    by the chunks it runs at once (so a chunk's tail never idles the process). Made lazily and again
    after a fork (prefork children)."""

    _lock = threading.Lock()
    _instance: "GenerationPool | None" = None

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        for n in range(size):
            threading.Thread(target=self._work, name=f"fortune-celery-{n}", daemon=True).start()

    @classmethod
    def get(cls) -> "GenerationPool":
        size = settings.FORTUNE_CELERY_INFLIGHT
        with cls._lock:
            pool = cls._instance
            if pool is None or pool.pid != os.getpid() or pool.size != size:
                if pool is not None and pool.pid == os.getpid():
                    pool.shutdown()
                pool = cls._instance = cls(size)
            return pool

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            call, key, results = job
            try:
                outcome = call()
            except BaseException as exc:  # a bug: the chunk's thread re-raises it
                outcome = exc
            results.put((key, outcome))

    def submit(self, call: Callable, key: str, results: queue.SimpleQueue) -> None:
        self.jobs.put((call, key, results))

    def shutdown(self) -> None:
        for _ in range(self.size):
            self.jobs.put(None)

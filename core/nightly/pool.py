"""Generation backends: where a run's generations are made. The scheduler submits (hash, input) and
takes outcomes back; it does not care whether they come from the calling thread or a thread pool
(or, later, Celery workers or a provider's batch API)."""

import queue
import threading
import time
from collections.abc import Callable
from typing import Protocol

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Provider, ProviderError
from core.resilience import Attempted

Outcome = Attempted | BaseException  # an exception is a bug in a worker, raised on the main thread


class GenerationBackend(Protocol):
    inline: bool

    def submit(self, digest: str, inp: GenerationInput) -> Outcome | None:
        """Start one generation; return its outcome now (inline) or None (it comes via results)."""

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        """Outcomes that arrived, waiting up to timeout for the first, then gather seconds more."""

    def close(self) -> None:
        """No more submissions. Outcomes still delivered afterwards are not waited for."""


class InlineBackend:
    """The local provider: no network, so generate on the calling thread (no pool, no hand-off)."""

    inline = True

    def __init__(self, *, provider: Provider) -> None:
        self._generate = provider.generate

    def submit(self, digest: str, inp: GenerationInput) -> Attempted:
        # No LLM behind it, so no LLM request is counted.
        try:
            return Attempted(generated=self._generate(inp), error=None, attempts=0)
        except ProviderError as exc:
            return Attempted(generated=None, error=exc, attempts=0)

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        return []

    def close(self) -> None:
        pass


class ThreadBackend:
    """Daemon worker threads that only call the provider. Daemon, so a call stuck in the network
    after the grace period can never keep the process alive (Railway skips the next cron run while
    the previous process lives)."""

    inline = False

    def __init__(self, *, workers: int, call: Callable[[GenerationInput], Attempted]) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._call = call
        self.threads = [
            threading.Thread(target=self._work, name=f"fortune-worker-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            digest, inp = job
            try:
                outcome = self._call(inp)
            except BaseException as exc:  # a bug: report it to the main thread instead of dying silently
                outcome = exc
            self._results.put((digest, outcome))

    def submit(self, digest: str, inp: GenerationInput) -> None:
        self._jobs.put((digest, inp))

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        try:
            first = self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait()
        except queue.Empty:
            return []
        if timeout > 0 and gather > 0:
            # Let results gather rather than wake for each one: every wake-up takes the GIL from the
            # worker threads, whose HTTP calls then wait for it.
            time.sleep(gather)
        items = [first]
        try:
            while True:
                items.append(self._results.get_nowait())
        except queue.Empty:
            pass
        return items

    def close(self) -> None:
        for _ in self.threads:
            self._jobs.put(None)

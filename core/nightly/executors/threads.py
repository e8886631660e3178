"""The thread-pool executor: daemon threads that only call the model, through the one call path
(core.resilience.call_with_retries) under the account's limiter. Daemon, so a call stuck in the
network after the grace period can never keep the process alive (Railway skips the next cron run
while the previous process lives). The threads never touch the ORM: database connections do not
grow with --workers."""

import functools
import queue
import threading
import time
from collections.abc import Callable

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Provider
from core.nightly.guards import StopGuards
from core.nightly.outcomes import Outcome
from core.resilience import Attempted, Limiter, RetryPolicy, call_with_retries, request_tokens


def model_call(*, provider: Provider, policy: RetryPolicy, limiter: Limiter, guards: StopGuards
               ) -> Callable[[GenerationInput], Attempted]:
    """One input's generation with retries, under the limiter, the run's stop and its deadline."""

    def call(inp: GenerationInput) -> Attempted:
        return call_with_retries(functools.partial(provider.generate, inp), policy=policy, limiter=limiter,
                                 tokens=request_tokens(limiter, inp), stop=guards.stop.event,
                                 deadline=guards.deadline)

    return call


class ThreadExecutor:
    inline = False
    stores = False

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

    def submit(self, digest: str, inp: GenerationInput, user_ids: list[int]) -> None:
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

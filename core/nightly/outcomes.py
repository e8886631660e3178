"""What every executor is: queued generation inputs in, outcomes out. The engine (core.nightly.scheduler
and its job table) owns everything else — dedupe, reuse of stored generations, users who join late,
the retry round, failure accounting, the writer, finishing the run — so an executor never decides
who gets a fortune, only how an input becomes a generation.

The night's executor is one of three, picked by core.nightly.executors.executor_for: inline (the local
provider, on the calling thread), threads (a pool calling the model), celery (chunks of inputs on
Celery workers). The OpenAI Batch API (core.nightly.executors.openai_batch) runs the same engine with
two executors of its own, a day ahead: one submits each input as a line of a batch file (Deferred),
one hands back the lines a batch answered.
"""

from dataclasses import dataclass
from typing import Protocol

from core.fortunes.inputs import GenerationInput
from core.resilience import Attempted


@dataclass(frozen=True, slots=True)
class Stored:
    """The executor stored the generation, and the result rows of the users it was given, itself
    (a Celery worker does, in its own process): the engine links only the users who joined later."""

    generation_id: int
    users: int  # result rows the executor wrote
    new: bool = True  # False: the generation was stored already (a re-dispatched chunk found it)
    attempts: int = 0  # model requests made for it
    tier: str = "standard"
    tokens_in: int = 0
    tokens_out: int = 0
    billed_failures: tuple[tuple[str, int, int], ...] = ()  # failed attempts the server billed all the same
    # Users the executor's store skipped, as the engine's writer does: deleted (or no longer eligible)
    # since planning, and those whose birth data changed (the engine plans them again).
    gone: tuple[int, ...] = ()
    changed: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Deferred:
    """Handed to a later collection (an OpenAI Batch API file): neither done nor failed tonight; the
    collection stores it, or the synchronous pass of its night makes it."""

    submitted: bool = True  # False: it was in an open batch already, nothing was sent


# An exception is a bug in an executor's worker, raised again on the engine's thread.
Outcome = Attempted | Stored | Deferred | BaseException


class Executor(Protocol):
    inline: bool  # submit() returns the outcome itself
    stores: bool  # outcomes are Stored: the executor writes the results of the users given to submit()

    def submit(self, digest: str, inp: GenerationInput, user_ids: list[int]) -> Outcome | None:
        """Start one generation; return its outcome now (inline) or None (it comes via results)."""

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        """Outcomes that arrived, waiting up to timeout for the first, then gather seconds more."""

    def close(self) -> None:
        """No more submissions. Outcomes still delivered afterwards are not waited for."""

"""The chunk task's body (core.tasks.celery_chunk_generate_task): claim a chunk, generate its inputs
through the one call path (core.resilience.call_with_retries) under the account's limiter, store the
generations and the result rows of the payload's users as it goes, heartbeat, and record what became
of each input in the chunk row (payload.py), which the executor reports to the engine.

A worker never touches the NightlyRun: the engine counts from the outcomes. Safe to run twice: the
claim lets one worker at a time have a chunk, and a re-dispatched chunk asks only what has neither a
stored generation nor a recorded failure. A chunk whose task fails stops its own calls still queued
or waiting for a slot."""

import datetime as dt
import functools
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass

from django.db.models import Case, Value, When
from django.db.models.functions import Now

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Provider, ProviderError, get_provider
from core.limiter import account_limiter_cached
from core.models import CeleryChunk
from core.nightly.bulk import ResultsWritten
from core.nightly.executors.celery.chunks import (
    STALE_SECONDS,
    celery_chunk_claim,
    celery_chunk_load,
)
from core.nightly.executors.celery.payload import failed_encode, input_decode, stored_encode
from core.nightly.executors.celery.pool import GenerationPool
from core.nightly.lifecycle import HEARTBEAT_SECONDS
from core.nightly.scheduler import FLUSH_SECONDS
from core.nightly.store import GeneratedItem, generation_ids_by_hash, nightly_output_write
from core.resilience import Attempted, RetryPolicy, call_with_retries, db_retried, request_tokens

logger = logging.getLogger("fortuna.nightly")

# A worker stores what it generated at least every FLUSH_SECONDS, the nightly run's durability promise,
# and at least every STORE_GENERATIONS generations (a chunk is small: its stores are small too).
STORE_GENERATIONS = 100

Jobs = dict[str, tuple[GenerationInput, list[int]]]  # hash -> (input, its users)


@dataclass
class ChunkReport:
    chunk_id: int
    skipped: bool = False  # someone else has it (or it is done or cancelled)
    reused_inputs: int = 0  # already stored when the chunk started (a re-dispatch)
    generated_inputs: int = 0
    failed_inputs: int = 0
    stopped_inputs: int = 0
    stored_users: int = 0
    requests: int = 0


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"[:255]


def _skipped_per_input(waiting: dict[str, list[int]], written: ResultsWritten) -> dict[str, dict[str, list[int]]]:
    """Each input's users the store skipped: {"gone": [...], "changed": [...]} (only inputs with some)."""
    if not written.gone and not written.changed:
        return {}
    gone, changed = set(written.gone), set(written.changed)
    skipped = {}
    for digest, users in waiting.items():
        entry = {"gone": [u for u in users if u in gone], "changed": [u for u in users if u in changed]}
        if entry["gone"] or entry["changed"]:
            skipped[digest] = entry
    return skipped


def users_per_input(waiting: dict[str, list[int]], written: ResultsWritten) -> dict[str, int]:
    """The result rows written for each input: its users less those skipped (deleted, or their birth
    data changed); rows that existed already (an on-demand fortune meanwhile) come off the last ones,
    so the counts add up to what the store wrote."""
    skipped = set(written.gone) | set(written.changed)
    counts = {digest: sum(1 for user_id in users if user_id not in skipped) for digest, users in waiting.items()}
    excess = sum(counts.values()) - written.stored
    for digest in reversed(list(counts)):
        if excess <= 0:
            break
        taken = min(excess, counts[digest])
        counts[digest] -= taken
        excess -= taken
    return counts


class ChunkWorker:
    def __init__(self, *, chunk: CeleryChunk, remaining: dt.timedelta | None, worker: str, provider: Provider,
                 rpm: int | None, tpm: int | None, max_attempts: int | None) -> None:
        self.chunk = chunk
        self.worker = worker
        self.provider = provider
        self.replace = chunk.run.forced
        self.limiter = account_limiter_cached(rpm=rpm, tpm=tpm)
        self.policy = RetryPolicy.from_settings(max_attempts=max_attempts)
        self.stop = threading.Event()
        self.report = ChunkReport(chunk_id=chunk.pk)
        self.deadline = None if remaining is None else time.monotonic() + remaining.total_seconds()
        # What earlier workers of this chunk recorded stays: the executor may have reported it.
        self.outcomes: dict[str, dict] = dict(chunk.outcomes or {})
        self.last_heartbeat = time.monotonic()

    def execute(self) -> ChunkReport:
        try:
            return self._execute()
        except BaseException:
            # The task fails (and is re-dispatched later): its calls still queued or waiting for a slot
            # must not go on spending requests whose answers nobody will store.
            self.stop.set()
            raise

    def _execute(self) -> ChunkReport:
        chunk, jobs = self.chunk, {}
        for row in chunk.payload["inputs"]:
            inp, digest, user_ids = input_decode(row, for_date=chunk.for_date, chunk_id=chunk.pk)
            if "f" not in self.outcomes.get(digest, {}):  # a failure recorded earlier is not asked again
                jobs[digest] = (inp, user_ids)
        stored = generation_ids_by_hash(hashes=list(jobs)) if jobs else {}
        if stored:
            # A re-dispatch: what the dead worker stored is not asked again; its users are (re)linked,
            # which writes nothing for those whose row exists.
            self.report.reused_inputs = len(stored)
            self._store(items=[], outcomes={}, reused={digest: (stored[digest], jobs.pop(digest)[1])
                                                       for digest in stored})
        if self.provider.name == "local":
            self._generate_inline(jobs)
        else:
            self._generate_pooled(jobs)
        self._finish()
        return self.report

    def _call(self, inp: GenerationInput):
        return lambda: call_with_retries(functools.partial(self.provider.generate, inp), policy=self.policy,
                                         limiter=self.limiter, tokens=request_tokens(self.limiter, inp),
                                         stop=self.stop, deadline=self.deadline)

    def _generate_inline(self, jobs: Jobs) -> None:
        ready: list[tuple[str, object]] = []
        for digest, (inp, _) in jobs.items():
            if self._should_stop():
                self.report.stopped_inputs += 1
                continue
            try:  # no LLM behind it, so no request is counted
                ready.append((digest, Attempted(generated=self.provider.generate(inp), error=None, attempts=0)))
            except ProviderError as exc:
                ready.append((digest, Attempted(generated=None, error=exc, attempts=0)))
            if len(ready) >= STORE_GENERATIONS:
                self._take(ready, jobs)
                ready = []
                self._heartbeat()
        self._take(ready, jobs)

    def _generate_pooled(self, jobs: Jobs) -> None:
        pool = GenerationPool.get()
        results: queue.SimpleQueue = queue.SimpleQueue()
        for digest, (inp, _) in jobs.items():
            pool.submit(self._call(inp), digest, results)
        waiting = len(jobs)
        ready: list[tuple[str, object]] = []
        last_flush = time.monotonic()
        while waiting:
            try:
                item = results.get(timeout=0.2)
                while True:
                    ready.append(item)
                    waiting -= 1
                    item = results.get_nowait()
            except queue.Empty:
                pass
            now = time.monotonic()
            if ready and (len(ready) >= STORE_GENERATIONS or now - last_flush >= FLUSH_SECONDS or not waiting):
                self._take(ready, jobs)
                ready, last_flush = [], now
            if now - self.last_heartbeat >= HEARTBEAT_SECONDS:
                self._heartbeat()
            self._should_stop()
        self._take(ready, jobs)

    def _take(self, ready: list, jobs: Jobs) -> None:
        """Store a batch of outcomes: generations, their users and every input's outcome in one transaction."""
        items, generated, failed = [], {}, {}
        for digest, outcome in ready:
            if isinstance(outcome, BaseException):
                raise outcome
            self.report.requests += outcome.attempts
            if outcome.generated is not None:
                items.append(GeneratedItem(inp=jobs[digest][0], hash=digest, generated=outcome.generated))
                generated[digest] = outcome
            elif outcome.stopped:  # not recorded: the chunk ends cancelled, and the executor says stopped
                self.report.stopped_inputs += 1
            else:
                self.report.failed_inputs += 1
                failed[digest] = failed_encode(outcome)
        if items or failed:
            self.outcomes.update(failed)
            self._store(items=items, outcomes=generated, reused={},
                        waiting={digest: jobs[digest][1] for digest in generated})

    @db_retried("storing a chunk's fortunes", atomic=True)
    def _store(self, *, items: list[GeneratedItem], outcomes: dict[str, Attempted],
               reused: dict[str, tuple[int, list[int]]], waiting: dict[str, list[int]] | None = None) -> None:
        """New generations (items, with their rounds in outcomes) and their users (waiting), or stored
        ones and their users (reused: hash -> (generation id, users)), then the chunk's record."""
        waiting = waiting or {}
        pairs = [(user_id, generation_id) for generation_id, users in reused.values() for user_id in users]
        written = nightly_output_write(items=items, reused=pairs, waiting=waiting, for_date=self.chunk.for_date,
                                       provider=self.provider.name, model=self.provider.model, replace=self.replace)
        users_of = {**{d: u for d, (_, u) in reused.items()}, **waiting}
        users = users_per_input(users_of, written.results)
        skipped = _skipped_per_input(users_of, written.results)
        for digest, (generation_id, _) in reused.items():
            if "g" not in self.outcomes.get(digest, {}):
                self.outcomes[digest] = stored_encode(generation_id=generation_id, users=users[digest], new=False,
                                                      outcome=None, **skipped.get(digest, {}))
        for digest, outcome in outcomes.items():
            self.outcomes[digest] = stored_encode(generation_id=written.ids[digest], users=users[digest], new=True,
                                                  outcome=outcome, **skipped.get(digest, {}))
        self.report.generated_inputs += len(items)
        self.report.stored_users += written.results.stored
        self._record()

    def _record(self, **updates) -> int:
        """Write the outcomes (and their counts) to the chunk, while it is still this worker's."""
        stored = sum(1 for entry in self.outcomes.values() if "g" in entry)
        return CeleryChunk.objects.filter(pk=self.chunk.pk, worker=self.worker).update(
            outcomes=self.outcomes, stored_inputs=stored, failed_inputs=len(self.outcomes) - stored,
            heartbeat_at=Now(), **updates)

    @db_retried("a chunk's heartbeat")
    def _heartbeat(self) -> None:
        """Tell the executor we live; stop if the chunk was cancelled or taken over."""
        self.last_heartbeat = time.monotonic()
        alive = CeleryChunk.objects.filter(pk=self.chunk.pk, worker=self.worker,
                                           state=CeleryChunk.State.RUNNING).update(heartbeat_at=Now())
        if not alive and not self.stop.is_set():
            logger.warning("fortune chunk %s: cancelled or taken over; stopping", self.chunk.pk)
            self.stop.set()

    def _should_stop(self) -> bool:
        if not self.stop.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop.set()
        return self.stop.is_set()

    @db_retried("finishing a chunk", atomic=True)
    def _finish(self) -> None:
        # Cancelled if it left inputs undone, or if the executor cancelled it meanwhile; finished_at
        # tells the executor the worker is done with it either way.
        state = CeleryChunk.State.CANCELLED if self.report.stopped_inputs else CeleryChunk.State.DONE
        self._record(state=Case(When(state=CeleryChunk.State.CANCELLED, then=Value(CeleryChunk.State.CANCELLED)),
                                default=Value(state)), finished_at=Now())


def celery_worker_warm_up() -> None:
    """What a worker process would otherwise do in its first chunk: import and build the provider's
    client (the SDK's import alone is a noticeable part of a second). Called when a worker process
    starts; a provider that cannot be built now is reported by the chunks, not here."""
    try:
        get_provider()
    except Exception:  # noqa: BLE001 - e.g. no OPENAI_API_KEY on a local-provider worker
        logger.debug("fortune worker warm-up: no provider built", exc_info=True)


def celery_chunk_generate(
    *, chunk_id: int, stale_seconds: float = STALE_SECONDS, rpm: int | None = None, tpm: int | None = None,
    max_attempts: int | None = None,
) -> ChunkReport:
    """Generate and store one chunk (the Celery task's body)."""
    worker = _worker_name()
    if not celery_chunk_claim(chunk_id=chunk_id, worker=worker, stale_seconds=stale_seconds):
        logger.info("fortune chunk %s: done, cancelled or running elsewhere; skipped", chunk_id)
        return ChunkReport(chunk_id=chunk_id, skipped=True)
    chunk = celery_chunk_load(chunk_id=chunk_id)
    provider = get_provider(name=chunk.run.provider)
    report = ChunkWorker(chunk=chunk, remaining=chunk.left, worker=worker, provider=provider, rpm=rpm, tpm=tpm,
                         max_attempts=max_attempts).execute()
    logger.info("fortune chunk %s: %d generated, %d reused, %d failed, %d stopped; %d users stored",
                chunk_id, report.generated_inputs, report.reused_inputs, report.failed_inputs, report.stopped_inputs,
                report.stored_users)
    return report

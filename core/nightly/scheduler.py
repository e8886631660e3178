"""The engine: one target date's work, page by page, around the job table — dedupe, reuse what is
stored, generate the rest through an executor (core.nightly.executors), hand finished generations to
the writer in bulk, link users who join late, one retry round, failure accounting.

No database here: the pages, the "already stored?" lookup and the writer are injected, so the
same scheduler runs a real night on any executor, a dry run (plan-only: no executor, no writer), the
OpenAI Batch API's submission and collection, and the unit tests.
"""

import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from core.fortunes.inputs import GenerationInput
from core.fortunes.pricing import PathUsage
from core.nightly.bulk import ResultRow, natal_key_of_input
from core.nightly.guards import StopGuards
from core.nightly.jobs import Job, JobState, JobTable
from core.nightly.outcomes import Deferred, Executor, Outcome, Stored
from core.nightly.plan import InputGroup, PlanPage
from core.nightly.store import Flush, GeneratedItem
from core.resilience import is_transient

logger = logging.getLogger("fortuna.nightly")

# A crash or a SIGKILL loses at most the generations in flight plus those finished since the last
# flush, so FLUSH_SECONDS is the durability promise (docs/BATCH_GENERATION.md).
FLUSH_SECONDS = 1.0
FLUSH_GENERATIONS = 2000
FLUSH_RESULTS = 10000
DRAIN_GATHER_SECONDS = 0.02  # the main thread waits this long after the first result to take a batch
GC_EVERY_PAGES = 20
SAMPLE_USERS = 5


class Writer(Protocol):
    outstanding: int

    def submit(self, flush: Flush) -> None: ...
    def done(self, *, wait: bool = False) -> list[Flush]: ...
    def close(self) -> None: ...


Lookup = Callable[[Iterable[str]], dict[str, int]]  # hashes -> {hash: generation id} of the stored ones
Replan = Callable[[list[int]], Iterable[PlanPage]]  # user ids -> their plan pages, as they are now
Estimate = Callable[[GenerationInput], tuple[int, int]]  # (tokens in, tokens out) a generation would cost


@dataclass(slots=True)
class Tally:
    to_generate: int = 0  # users the pages said need a fortune
    stored_users: int = 0  # result rows the writer wrote
    generations: int = 0  # generations the writer stored
    planned: int = 0  # new generations (plan-only mode)
    reused_users: int = 0  # users whose input was stored already
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    # Generations by the tier that served them ("flex" when the provider says so, else "standard"):
    # the synchronous entries of NightlyRun.cost_by_path.
    paths: dict[str, PathUsage] = field(default_factory=lambda: {"flex": PathUsage(), "standard": PathUsage()})
    unplannable: list[int] = field(default_factory=list)
    sample_user_ids: list[int] = field(default_factory=list)
    gone: list[int] = field(default_factory=list)  # users deleted (or no longer eligible) before their row was written
    # Users whose birth data changed before their row was written: planned again from the new data
    # once (replanned counts them), else left to the on-demand path.
    changed: list[int] = field(default_factory=list)
    replanned: int = 0
    deferred_users: int = 0  # users whose input went to a later collection (the OpenAI Batch API)
    # Of those, users whose input was in an open collection already (Deferred(submitted=False)).
    deferred_unsent_users: int = 0


def _noop(*args, **kwargs) -> None:
    return None


class Scheduler:
    def __init__(
        self, *, pages: Iterable[PlanPage], lookup: Lookup, guards: StopGuards | None = None,
        executor: Executor | None = None, writer: Writer | None = None, max_in_flight: int = 0,
        retry_cooldown: float = 0.0, grace_seconds: float = 2.0, estimate: Estimate | None = None,
        on_tick: Callable[[bool], None] = _noop, on_note: Callable[[str], None] = _noop,
        clock: Callable[[], float] = time.monotonic, replan: Replan | None = None,
    ) -> None:
        self.pages = pages
        self.replan = replan
        self.lookup = lookup
        self.guards = guards
        self.executor = executor
        self.writer = writer
        self.max_in_flight = max_in_flight
        self.retry_cooldown = retry_cooldown
        self.grace_seconds = grace_seconds
        self.estimate = estimate
        self.on_tick = on_tick
        self.on_note = on_note
        self._clock = clock
        self.table = JobTable(executor_stores=executor is not None and executor.stores)
        self.tally = Tally()
        self.outbox: list[ResultRow] = []  # (user_id, generation_id, natal key) result rows for the next flush
        self.unsent: set[str] = set()  # deferred inputs that were in an open collection already
        self.plan_only = executor is None
        self.inline = executor is not None and executor.inline
        # The cost budget is checked per result, so results are taken at once, never gathered.
        self.gather = DRAIN_GATHER_SECONDS if guards is not None and not guards.budget else 0.0
        self.last_flush = clock()

    @property
    def failed_users(self) -> int:
        return self.table.failed_users + len(self.tally.unplannable)

    # --- main flow ----------------------------------------------------------------------------
    def plan(self) -> Tally:
        """Plan-only: the same dedupe and reuse as a run, counting instead of generating."""
        for page in self.pages:
            self.take_page(page)
        return self.tally

    def run(self) -> Tally:
        """Every page, then the work in flight, the retry round and the last flushes."""
        for number, page in enumerate(self.pages, start=1):
            if self.guards.should_stop():
                break
            if number % GC_EVERY_PAGES == 0:
                gc.collect()  # the caller pauses the collector for the run (core.nightly.process.gc_paused)
            self.take_page(page)
            # Keep at most about one page in flight: bounded memory, and dedupe stays effective.
            while self.table.queued > self.max_in_flight and not self.guards.stopped:
                self.drain(timeout=0.2)
        self.finish_in_flight()
        self.retry_round()
        self.flush_all()
        self.replan_changed()
        return self.tally

    def replan_changed(self) -> None:
        """Users whose birth data changed during the run: plan them once more from what they have now
        (a second change during that round leaves them to the on-demand path)."""
        users, self.tally.changed = self.tally.changed, []
        if not users or self.replan is None or self.guards.should_stop():
            self.tally.changed = users
            return
        logger.info("nightly run: %d users changed their birth data during the run; planning them again",
                    len(users))
        self.on_note(f"planned {len(users)} users again: their birth data changed during the run")
        self.tally.replanned += len(users)
        for page in self.replan(users):
            self.take_page(page)
        self.finish_in_flight()
        self.flush_all()

    def take_page(self, page: PlanPage) -> None:
        tally, table = self.tally, self.table
        tally.unplannable.extend(page.unplannable)
        tally.to_generate += page.users
        fresh: dict[str, InputGroup] = {}
        for digest, group in page.groups.items():
            job = table.get(digest)
            if job is None:
                fresh[digest] = group
            elif job.state is JobState.DEFERRED:
                # Nothing more to do for them tonight: counted, not kept (the job holds no users).
                tally.deferred_users += len(group.user_ids)
                if digest in self.unsent:
                    tally.deferred_unsent_users += len(group.user_ids)
            else:
                table.join(job, group.user_ids)
        if self.plan_only:
            for group in fresh.values():
                if len(tally.sample_user_ids) >= SAMPLE_USERS:
                    break
                tally.sample_user_ids.append(group.user_ids[0])
        if fresh:
            for digest, generation_id in self.lookup(fresh).items():
                group = fresh.pop(digest)
                tally.reused_users += len(group.user_ids)
                if not self.plan_only:
                    key = natal_key_of_input(group.inp)
                    self.outbox.extend((user_id, generation_id, key) for user_id in group.user_ids)
        for digest, group in fresh.items():
            if self.plan_only:
                table.add(digest=digest, inp=None, user_ids=group.user_ids)
                tally.planned += 1
                if self.estimate is not None:
                    tokens_in, tokens_out = self.estimate(group.inp)
                    tally.tokens_in += tokens_in
                    tally.tokens_out += tokens_out
                continue
            self.submit(table.add(digest=digest, inp=group.inp, user_ids=group.user_ids))
            if self.inline and self.guards.should_stop():
                break
        if not self.plan_only:
            self.tick()

    def submit(self, job: Job) -> None:
        outcome = self.executor.submit(job.hash, job.inp, job.user_ids)
        if outcome is not None:
            self.on_result(job.hash, outcome)
        else:
            self.drain(timeout=0)

    def drain(self, *, timeout: float) -> None:
        """Take every finished result (waiting up to timeout for the first), then flush/heartbeat."""
        if not self.inline and self.table.queued:
            for digest, outcome in self.executor.results(timeout=timeout, gather=self.gather):
                self.on_result(digest, outcome)
        self.tick()

    def on_result(self, digest: str, outcome: Outcome) -> None:
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, Deferred):
            self.on_deferred(digest, outcome)
            return
        if isinstance(outcome, Stored):
            self.on_stored(digest, outcome)
            return
        self.tally.requests += outcome.attempts
        # Answers the server billed though they failed (invalid, truncated): paid for, so counted.
        for tier, tokens_in, tokens_out in outcome.billed_failures:
            self._count_usage(tier=tier, tokens_in=tokens_in, tokens_out=tokens_out)
        job = self.table.get(digest)
        if job is None or job.state is not JobState.QUEUED:
            if outcome.billed_failures:
                self.guards.spent(usage=self.tally.paths)
            return  # delivered after the job was abandoned: its users get a fortune next run
        if outcome.generated is not None:
            self.table.generated(job, outcome.generated)
            generated = outcome.generated
            self._count_usage(tier=generated.service_tier, tokens_in=generated.tokens_in,
                              tokens_out=generated.tokens_out)
            self.guards.succeeded(usage=self.tally.paths)
            return
        if outcome.billed_failures:
            self.guards.spent(usage=self.tally.paths)
        if outcome.stopped:
            self.table.abandoned(job)  # neither done nor failed: the next run retries its users
            return
        self.table.failed(job, outcome.error)
        reason = outcome.error.reason if outcome.error else "unknown"
        logger.warning(
            "fortune generation failed for input %s (%d users) after %d attempts: %s: %s",
            digest[:12], len(job.user_ids), outcome.attempts, reason, outcome.error,
        )
        self.guards.failed(reason=reason, error=outcome.error)

    def on_deferred(self, digest: str, outcome: Deferred) -> None:
        job = self.table.get(digest)
        if job is not None and job.state is JobState.QUEUED:
            self.table.deferred(job)
            self.tally.deferred_users += len(job.user_ids)
            if not outcome.submitted:
                self.unsent.add(digest)
                self.tally.deferred_unsent_users += len(job.user_ids)
            # The job stays only so that later users of its input join it: a submission a day ahead
            # defers up to a million inputs, so it keeps neither the input nor the users.
            job.inp, job.user_ids = None, []

    def on_stored(self, digest: str, outcome: Stored) -> None:
        """The executor stored the generation and its users' results: link those who joined later."""
        tally = self.tally
        tally.requests += outcome.attempts
        for tier, tokens_in, tokens_out in outcome.billed_failures:
            self._count_usage(tier=tier, tokens_in=tokens_in, tokens_out=tokens_out)
        if outcome.new:
            self._count_usage(tier=outcome.tier, tokens_in=outcome.tokens_in, tokens_out=outcome.tokens_out)
        tally.stored_users += outcome.users
        tally.gone.extend(outcome.gone)
        tally.changed.extend(outcome.changed)
        job = self.table.get(digest)
        if job is None or job.state is not JobState.QUEUED:
            return  # a result after the job was abandoned: stored all the same, counted above
        tally.generations += outcome.new
        late = self.table.stored(digest).late
        if late:
            key = natal_key_of_input(job.inp)
            self.outbox.extend((user_id, outcome.generation_id, key) for user_id in late)
        if outcome.new:
            self.guards.succeeded(usage=tally.paths)
        else:
            self.guards.spent(usage=tally.paths)

    def _count_usage(self, *, tier: str, tokens_in: int, tokens_out: int) -> None:
        tally = self.tally
        tally.tokens_in += tokens_in
        tally.tokens_out += tokens_out
        path = tally.paths["flex" if tier == "flex" else "standard"]
        path.requests += 1
        path.tokens_in += tokens_in
        path.tokens_out += tokens_out

    def finish_in_flight(self) -> None:
        grace_end = None
        while self.table.queued:
            if self.guards.stopped and grace_end is None:
                grace_end = self._clock() + self.grace_seconds
            if grace_end is not None and self._clock() >= grace_end:
                logger.warning("nightly run: %d generations still in flight after the grace period; "
                               "abandoned (their users get a fortune next run)", self.table.queued)
                self.abandon()
                break
            self.drain(timeout=0.1)
        self.flush()

    def abandon(self) -> None:
        """Forget work still in flight; generated-but-unstored work is kept for the flush."""
        self.table.abandon_queued()

    def retry_round(self) -> None:
        transient = [job for job in self.table.in_state(JobState.FAILED)
                     if job.error is not None and is_transient(job.error)]
        if not transient or self.guards.should_stop():
            return
        logger.info("nightly run: %d generations failed for transient reasons; one more round in %.1f s",
                    len(transient), self.retry_cooldown)
        self.on_note(f"retry round for {len(transient)} generations after {self.retry_cooldown:g} s")
        self.tick(force=True)
        if self.guards.wait(self.retry_cooldown):
            return
        for job in transient:
            self.table.requeue(job)
            self.submit(job)
        self.finish_in_flight()

    # --- flushes ------------------------------------------------------------------------------
    def tick(self, *, force: bool = False) -> None:
        now = self._clock()
        pending = self.table.generated_count
        if (force or pending >= FLUSH_GENERATIONS or len(self.outbox) >= FLUSH_RESULTS
                or (now - self.last_flush >= FLUSH_SECONDS and (pending or self.outbox))):
            self.flush()
        elif self.writer.outstanding:
            self.collect(self.writer.done())  # keep the stored count (progress, heartbeat) current
        self.on_tick(force)
        self.guards.should_stop()

    def flush(self) -> None:
        """Hand what is ready to the writer (blocks only while the writer's queue is full)."""
        self.last_flush = self._clock()
        self.collect(self.writer.done())
        if not self.table.generated_count and not self.outbox:
            return
        items, waiting = [], {}
        for job in self.table.take_generated():
            items.append(GeneratedItem(inp=job.inp, hash=job.hash, generated=job.generated))
            waiting[job.hash] = job.user_ids
            job.inp = job.generated = None  # the flush holds them until written
        flush, self.outbox = Flush(items=items, reused=self.outbox, waiting=waiting), []
        self.writer.submit(flush)

    def collect(self, flushes: list[Flush]) -> None:
        for flush in flushes:
            keys = {item.hash: natal_key_of_input(item.inp) for item in flush.items}
            for digest in flush.waiting:
                late = self.table.stored(digest).late
                if late:
                    generation_id, key = flush.ids[digest], keys.get(digest)
                    self.outbox.extend((user_id, generation_id, key) for user_id in late)
            self.tally.generations += len(flush.items)
            self.tally.stored_users += flush.stored
            self.tally.gone.extend(flush.gone)
            self.tally.changed.extend(flush.changed)
            logger.debug("nightly run: stored %d generations and %d results", len(flush.items), flush.stored)

    def flush_all(self) -> None:
        """Flush, wait for the writer, and repeat while late users of written generations remain."""
        self.flush()
        while self.writer.outstanding:
            self.collect(self.writer.done(wait=True))
            self.flush()

    def settle_writer(self) -> None:
        """After a crash: stop the writer (it writes what was queued) and count what it stored."""
        if self.writer is None:
            return
        self.writer.close()
        try:
            self.collect(self.writer.done())
        except BaseException:  # noqa: BLE001 - the run is failing already; its own error is raised
            logger.debug("nightly run: the writer failed too", exc_info=True)

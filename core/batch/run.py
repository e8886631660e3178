"""The nightly batch: lock, plan, generate, store — services a command or a Celery task can call.

Worker threads only call the provider (network I/O); planning stays on the calling thread, which
hands finished generations in bulk to one writer thread (core.batch.store.BatchWriter) as the run
goes, so a crash loses only in-flight work and the database writes while the batch generates.
"""

import datetime as dt
import gc
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TextIO

from django.conf import settings
from django.db import connection
from django.db.models import Exists, OuterRef
from django.utils import timezone

from core.batch.dates import BatchTarget, batch_lock_dates, batch_targets
from core.batch.lock import batch_lock
from core.batch.plan import (
    PAGE_SIZE,
    REASON_NO_NATAL,
    InputGroup,
    PlanPage,
    batch_eligible_users,
    batch_plan_counts,
    batch_plan_pages,
    batch_user_check,
)
from core.batch.progress import ProgressReporter
from core.batch.store import BatchWriter, Flush, GeneratedItem, generation_ids_by_hash
from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Provider, ProviderError, get_provider
from core.fortunes.providers.base import REASON_CONFIG, REASON_CONNECTION, REASON_QUOTA, REASON_TIMEOUT
from core.limiter import RateLimiter
from core.models import BatchRun, FortuneResult
from core.resilience import Attempted, RetryPolicy, generate_with_retries, is_transient

logger = logging.getLogger("fortuna.batch")

HEARTBEAT_SECONDS = 2.0  # BatchRun progress fields are promised at least every 5 s
FLUSH_SECONDS = 1.0
FLUSH_GENERATIONS = 2000
DRAIN_GATHER_SECONDS = 0.02  # the main thread waits this long after the first result to take a batch
FLUSH_RESULTS = 10000
FAILURE_SAMPLE_SIZE = 20
GC_EVERY_PAGES = 20
# Consecutive generations failing for a reason that means "the provider is unusable" (nothing will
# succeed: wrong URL, bad key, quota gone) before the run stops instead of grinding through everyone.
PROVIDER_DOWN_REASONS = frozenset({REASON_CONNECTION, REASON_TIMEOUT, REASON_QUOTA, REASON_CONFIG})
PROVIDER_DOWN_MIN_STREAK = 10

STOP_BUDGET = "cost budget reached: estimated ${cost} of ${budget}"
STOP_DEADLINE = "max runtime of {minutes:g} min reached"
STOP_PROVIDER_DOWN = "provider unusable: {count} generations in a row failed ({reason})"
STOP_SIGNAL = "interrupted by {signal}"
STILL_MISSING = "{count} eligible users still have no fortune for {target_date}"
NOTE_CATCH_UP = "catch-up: no successful run for {target_date} (missed night or a start after KST midnight)"
NOTE_INLINE = "local provider: generated inline on the main thread (no network, so no thread pool)"
NOTE_NATAL_FAILED = "natal refresh failed ({error}); users without pillars are counted failed"
CRASHED = "crashed: {error}"


class StopToken:
    """Ask a running batch to stop taking new work (a signal handler, a Celery revoke, a test)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""
        self.interrupted = False

    def request(self, reason: str, *, interrupted: bool = False) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.interrupted = interrupted
            self.event.set()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()


@dataclass
class BatchOptions:
    base_date: dt.date | None = None  # None: today in Korea, with the missed-night catch-up
    workers: int = 5
    user_id: int | None = None
    force: bool = False
    rpm: int | None = None  # None: settings.OPENAI_RPM (0 = no limit)
    max_attempts: int | None = None  # None: settings.FORTUNE_MAX_ATTEMPTS
    max_cost: Decimal | None = None  # None: settings.FORTUNE_MAX_COST_PER_RUN (0 = no budget)
    max_runtime_minutes: float = 90.0
    retry_cooldown: float = 30.0  # seconds before the end-of-run round for transient failures
    grace_seconds: float = 2.0  # in-flight calls' time to finish once stopped (Railway's gap is 3 s)
    page_size: int = PAGE_SIZE
    provider_name: str | None = None
    progress_stream: TextIO | None = None
    progress_is_tty: bool = False
    progress_interval: float = 10.0


@dataclass
class DryRunReport:
    target: BatchTarget
    eligible: int = 0
    already_present: int = 0
    to_generate: int = 0  # users
    generations: int = 0  # distinct new generations = LLM requests without retries
    reused: int = 0  # users whose input already has a stored generation
    unplannable: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    estimated_cost: Decimal = Decimal(0)
    sample_user_ids: list[int] = field(default_factory=list)
    provider: str = ""


def batch_cost(*, tokens_in: int, tokens_out: int) -> Decimal:
    cost = (Decimal(tokens_in) * settings.FORTUNE_PRICE_INPUT_PER_M
            + Decimal(tokens_out) * settings.FORTUNE_PRICE_OUTPUT_PER_M) / Decimal(1_000_000)
    return cost.quantize(Decimal("0.000001"))


@contextmanager
def batch_locks(*, base_date: dt.date | None) -> Iterator[None]:
    """Every target date this run may touch, locked before any planning (raises BatchLocked)."""
    with ExitStack() as stack:
        for target_date in batch_lock_dates(base_date=base_date):
            stack.enter_context(batch_lock(target_date=target_date))
        yield


def batch_generate_daily(*, options: BatchOptions, stop: StopToken | None = None) -> list[BatchRun]:
    """The nightly job: lock, refresh natal pillars, then one BatchRun per target (catch-up first).

    Raises BatchLocked (another run is active: nothing written), UserNotEligible and
    ProviderConfigError (nothing written).
    """
    from core.services.natal import users_refresh_natal

    stop = stop or StopToken()
    # --max-runtime bounds the whole job, catch-up included.
    deadline = time.monotonic() + options.max_runtime_minutes * 60
    with batch_locks(base_date=options.base_date):
        if options.user_id is not None:
            batch_user_check(user_id=options.user_id)
        provider = get_provider(name=options.provider_name)
        targets = batch_targets(base_date=options.base_date, catch_up_allowed=options.user_id is None)
        for target in targets:
            batch_runs_mark_stale(target_date=target.target_date)
        notes: list[str] = []
        try:
            refreshed = users_refresh_natal()
        except Exception as exc:  # one bad row must not cost every user their fortune
            logger.exception("fortune batch: natal refresh failed")
            notes.append(NOTE_NATAL_FAILED.format(error=exc))
        else:
            if refreshed:
                logger.info("fortune batch: natal pillars refreshed for %d users", refreshed)
        runs = []
        for target in targets:
            if stop.is_set:
                break
            runs.append(batch_run_target(
                target=target, options=options, provider=provider, stop=stop, notes=notes, deadline=deadline
            ))
        return runs


def batch_runs_mark_stale(*, target_date: dt.date) -> int:
    """Mark `running` rows for target_date interrupted. Call only while holding its lock: then no
    live process can own them (a killed run never got to finish its row)."""
    count = BatchRun.objects.filter(target_date=target_date, status=BatchRun.Status.RUNNING).update(
        status=BatchRun.Status.INTERRUPTED, finished_at=timezone.now(),
        stop_reason="stale: its process died without finishing (the lock was free)",
    )
    if count:
        logger.warning("fortune batch: marked %d stale running run(s) for %s interrupted", count, target_date)
    return count


def batch_run_target(
    *, target: BatchTarget, options: BatchOptions, provider: Provider, stop: StopToken,
    notes: list[str] | None = None, deadline: float | None = None,
) -> BatchRun:
    """One BatchRun for one target date. The caller holds the target's lock."""
    notes = list(notes or [])
    if target.catch_up:
        notes.append(NOTE_CATCH_UP.format(target_date=target.target_date))
        logger.warning("fortune batch: %s; filling its gaps first", notes[-1])
    run = BatchRun.objects.create(
        base_date=target.base_date, target_date=target.target_date, catch_up=target.catch_up,
        forced=options.force, user_id_filter=options.user_id, workers=options.workers,
        provider=provider.name, model=provider.model, pid=os.getpid(), hostname=socket.gethostname()[:255],
        notes="\n".join(notes),
    )
    runner = _Runner(run=run, target=target, options=options, provider=provider, stop=stop, deadline=deadline)
    try:
        runner.execute()
    except BaseException as exc:
        runner.abandon()
        runner.settle_writer()
        run.status = BatchRun.Status.FAILED
        run.stop_reason = CRASHED.format(error=f"{type(exc).__name__}: {exc}")[:255]
        run.finished_at = timezone.now()
        runner.save_counters(final=True)
        logger.exception("fortune batch %s: %s", target.target_date, run.stop_reason)
        raise
    return run


@dataclass(slots=True)
class _Job:
    inp: GenerationInput
    user_ids: list[int]
    generated: object | None = None
    error: ProviderError | None = None


class _Pool:
    """Daemon worker threads that only call the provider. Daemon, so a call stuck in the network
    after the grace period can never keep the process alive (Railway skips the next cron run while
    the previous process lives)."""

    def __init__(self, *, workers: int, call) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self._call = call
        self.threads = [
            threading.Thread(target=self._work, name=f"fortune-worker-{n}", daemon=True) for n in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            digest, inp = job
            try:
                outcome = self._call(inp)
            except BaseException as exc:  # a bug: report it to the main thread instead of dying silently
                outcome = exc
            self.results.put((digest, outcome))

    def submit(self, digest: str, inp: GenerationInput) -> None:
        self.jobs.put((digest, inp))

    def shutdown(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)


class _Runner:
    def __init__(
        self, *, run: BatchRun, target: BatchTarget, options: BatchOptions, provider: Provider, stop: StopToken,
        deadline: float | None = None,
    ) -> None:
        self.run = run
        self.target = target
        self.options = options
        self.provider = provider
        self.stop = stop
        self.replace = options.force
        self.nonce = f"force-run-{run.pk}" if options.force else ""
        self.policy = RetryPolicy.from_settings(max_attempts=options.max_attempts)
        rpm = options.rpm if options.rpm is not None else settings.OPENAI_RPM
        self.limiter = RateLimiter(rpm or None)
        budget = options.max_cost if options.max_cost is not None else settings.FORTUNE_MAX_COST_PER_RUN
        self.budget = Decimal(budget or 0)
        self.started = time.monotonic()
        self.deadline = deadline if deadline is not None else self.started + options.max_runtime_minutes * 60
        self.inline = provider.name == "local"
        self.pool: _Pool | None = None
        # hash -> job, for generations submitted and not yet stored: later users with the same input
        # join the job instead of asking again. Bounded by the in-flight window, not by the run.
        self.pending: dict[str, _Job] = {}
        self.ready: list[str] = []  # hashes in pending whose generation is done, awaiting the flush
        # hash -> users who asked for it after its generation went to the writer (not yet stored, so
        # no id yet); they become `reused` once the writer reports the id.
        self.handed: dict[str, list[int]] = {}
        self.writer: BatchWriter | None = None
        self.in_flight = 0
        self.failed_jobs: dict[str, _Job] = {}
        self.reused: list[tuple[int, int]] = []  # (user_id, generation_id) of already stored inputs
        self.unplannable: list[int] = []
        self.stored_users = 0
        self.generations = 0
        self.requests = 0
        self.tokens_in = 0
        self.tokens_out = 0
        self.failure_streak = 0
        self.last_flush = time.monotonic()
        self.last_heartbeat = 0.0
        self.progress: ProgressReporter | None = None

    # --- main flow ----------------------------------------------------------------------------
    def execute(self) -> None:
        run, target = self.run, self.target
        counts = batch_plan_counts(target_date=target.target_date, user_id=self.options.user_id)
        run.eligible, run.already_present = counts.eligible, counts.already_present
        total = counts.eligible if self.replace else counts.eligible - counts.already_present
        logger.info(
            "fortune batch %s (base %s%s): %d eligible, %d already present, %d to do; provider %s, %s",
            target.target_date, target.base_date, ", catch-up" if target.catch_up else "", counts.eligible,
            counts.already_present, total, self.provider.generator,
            "inline" if self.inline else f"{self.options.workers} workers",
        )
        if self.inline:
            self._note(NOTE_INLINE)
        self.save_counters()
        self.progress = ProgressReporter(
            total=total, stream=self.options.progress_stream, is_tty=self.options.progress_is_tty,
            interval=self.options.progress_interval, label=f"fortunes {target.target_date}",
        )
        if not self.inline:
            self.pool = _Pool(workers=self.options.workers, call=self._call)
        self.writer = BatchWriter(
            for_date=target.target_date, provider=self.provider.name, model=self.provider.model,
            replace=self.replace,
            # A writer connection of its own cannot see a caller's uncommitted rows; SQLite allows
            # one writer at a time anyway.
            threaded=connection.vendor == "postgresql" and not connection.in_atomic_block,
        )
        # The cyclic GC would scan the in-flight generations (pydantic models) over and over: about a
        # third of a 100k local run's CPU. The batch's objects are freed by reference counting, so the
        # collector is paused during the run and run once per GC_EVERY_PAGES pages instead.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            pages = batch_plan_pages(
                target_date=target.target_date, generator=self.provider.generator, force=self.replace,
                nonce=self.nonce, user_id=self.options.user_id, page_size=self.options.page_size,
                language=settings.FORTUNE_LANGUAGE,
            )
            for number, page in enumerate(pages, start=1):
                if self._should_stop():
                    break
                if number % GC_EVERY_PAGES == 0:
                    gc.collect()
                self._take_page(page)
                # Keep at most about one page in flight: bounded memory, and dedupe stays effective.
                while self.in_flight > self.options.page_size and not self.stop.is_set:
                    self._drain(timeout=0.2)
            self._finish_in_flight()
            self._retry_round()
            self._flush_all()
        finally:
            if self.pool:
                self.pool.shutdown()
            self.writer.close()  # on a crash, still writes what was queued
            self.progress.update(done=self.stored_users, failed=self.failed_users)
            self.progress.close()
            if gc_was_enabled:
                gc.enable()
        self._complete()

    def _take_page(self, page: PlanPage) -> None:
        self.unplannable.extend(page.unplannable)
        fresh: dict[str, InputGroup] = {}
        for digest, group in page.groups.items():
            job = self.pending.get(digest) or self.failed_jobs.get(digest)
            if job is not None:
                job.user_ids.extend(group.user_ids)
            elif digest in self.handed:
                self.handed[digest].extend(group.user_ids)
            else:
                fresh[digest] = group
        if fresh:
            for digest, generation_id in generation_ids_by_hash(hashes=fresh).items():
                self.reused.extend((user_id, generation_id) for user_id in fresh.pop(digest).user_ids)
        for digest, group in fresh.items():
            self.pending[digest] = _Job(inp=group.inp, user_ids=group.user_ids)
            self._submit(digest, group.inp)
            if self.inline and self._should_stop():
                break
        self._tick()

    def _submit(self, digest: str, inp: GenerationInput) -> None:
        self.in_flight += 1
        if self.pool is not None:
            self.pool.submit(digest, inp)
            self._drain(timeout=0)
            return
        # Inline means the local provider: no LLM, so no LLM request is counted.
        try:
            outcome = Attempted(generated=self.provider.generate(inp), error=None, attempts=0)
        except ProviderError as exc:
            outcome = Attempted(generated=None, error=exc, attempts=0)
        self._on_result(digest, outcome)

    def _call(self, inp: GenerationInput) -> Attempted:
        return generate_with_retries(
            provider=self.provider, inp=inp, policy=self.policy, limiter=self.limiter, stop=self.stop.event,
            deadline=self.deadline,
        )

    def _drain(self, *, timeout: float) -> None:
        """Take every finished result (waiting up to timeout for the first), then flush/heartbeat."""
        if self.pool is not None and self.in_flight:
            try:
                item = self.pool.results.get(timeout=timeout) if timeout > 0 else self.pool.results.get_nowait()
                if timeout > 0 and not self.budget:
                    # Let results gather rather than wake for each one: every wake-up takes the GIL from
                    # the worker threads, whose HTTP calls then wait for it (bench/batch.py, 64 workers:
                    # 90-95% of the bare loop's rate when waking per result, 97-99% gathering). Not with
                    # a cost budget, which is checked here and must stop new requests at once.
                    time.sleep(DRAIN_GATHER_SECONDS)
                while True:
                    self._on_result(*item)
                    item = self.pool.results.get_nowait()
            except queue.Empty:
                pass
        self._tick()

    def _on_result(self, digest: str, outcome: Attempted | BaseException) -> None:
        self.in_flight -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        job = self.pending[digest]
        self.requests += outcome.attempts
        if outcome.generated is not None:
            job.generated = outcome.generated
            self.ready.append(digest)
            self.tokens_in += outcome.generated.tokens_in
            self.tokens_out += outcome.generated.tokens_out
            self.failure_streak = 0
            if self.budget and self.cost >= self.budget:
                self.stop.request(STOP_BUDGET.format(cost=self.cost, budget=self.budget))
            return
        del self.pending[digest]
        if outcome.stopped:
            return  # neither done nor failed: its users stay without a fortune, the next run retries
        job.error = outcome.error
        self.failed_jobs[digest] = job
        reason = outcome.error.reason if outcome.error else "unknown"
        logger.warning(
            "fortune generation failed for input %s (%d users) after %d attempts: %s: %s",
            digest[:12], len(job.user_ids), outcome.attempts, reason, outcome.error,
        )
        if reason in PROVIDER_DOWN_REASONS:
            self.failure_streak += 1
            if self.failure_streak >= max(PROVIDER_DOWN_MIN_STREAK, 2 * self.options.workers):
                self.stop.request(STOP_PROVIDER_DOWN.format(count=self.failure_streak, reason=reason))
        else:
            self.failure_streak = 0

    def _finish_in_flight(self) -> None:
        grace_end = None
        while self.in_flight:
            if self.stop.is_set and grace_end is None:
                grace_end = time.monotonic() + self.options.grace_seconds
            if grace_end is not None and time.monotonic() >= grace_end:
                logger.warning("fortune batch: %d generations still in flight after the grace period; "
                               "abandoned (their users get a fortune next run)", self.in_flight)
                self.abandon()
                break
            self._drain(timeout=0.1)
        self._flush()

    def abandon(self) -> None:
        """Forget work still in flight; done-but-unstored generations are kept for the flush."""
        for digest in [d for d, job in self.pending.items() if job.generated is None]:
            del self.pending[digest]
        self.in_flight = 0
        if self.pool is not None:
            self.pool.results = queue.SimpleQueue()

    def settle_writer(self) -> None:
        """After a crash: stop the writer (it writes what was queued) and count what it stored."""
        if self.writer is None:
            return
        self.writer.close()
        try:
            self._collect(self.writer.done())
        except BaseException:  # noqa: BLE001 - the run is failing already; its own error is raised
            logger.debug("fortune batch: the writer failed too", exc_info=True)

    def _retry_round(self) -> None:
        transient = {d: job for d, job in self.failed_jobs.items() if job.error is not None and is_transient(job.error)}
        if not transient or self._should_stop():
            return
        logger.info("fortune batch: %d generations failed for transient reasons; one more round in %.1f s",
                    len(transient), self.options.retry_cooldown)
        self._note(f"retry round for {len(transient)} generations after {self.options.retry_cooldown:g} s")
        self._tick(force=True)
        if self.stop.event.wait(self.options.retry_cooldown):
            return
        for digest, job in transient.items():
            del self.failed_jobs[digest]
            self.pending[digest] = _Job(inp=job.inp, user_ids=job.user_ids)
            self._submit(digest, job.inp)
        self._finish_in_flight()

    # --- guards, flushes, heartbeats ----------------------------------------------------------
    @property
    def cost(self) -> Decimal:
        return batch_cost(tokens_in=self.tokens_in, tokens_out=self.tokens_out)

    def _should_stop(self) -> bool:
        if not self.stop.is_set and time.monotonic() >= self.deadline:
            self.stop.request(STOP_DEADLINE.format(minutes=self.options.max_runtime_minutes))
        return self.stop.is_set

    def _tick(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if (force or len(self.ready) >= FLUSH_GENERATIONS or len(self.reused) >= FLUSH_RESULTS
                or (now - self.last_flush >= FLUSH_SECONDS and (self.ready or self.reused))):
            self._flush()
        elif self.writer.outstanding:
            self._collect(self.writer.done())  # keep the stored count (progress, heartbeat) current
        if force or now - self.last_heartbeat >= HEARTBEAT_SECONDS:
            self.save_counters()
        self.progress.update(done=self.stored_users, failed=self.failed_users)
        self._should_stop()

    def _flush(self) -> None:
        """Hand what is ready to the writer (blocks only while the writer's queue is full)."""
        self.last_flush = time.monotonic()
        self._collect(self.writer.done())
        if not self.ready and not self.reused:
            return
        items, waiting = [], {}
        for digest in self.ready:
            job = self.pending.pop(digest)
            items.append(GeneratedItem(inp=job.inp, hash=digest, generated=job.generated))
            waiting[digest] = job.user_ids
            self.handed[digest] = []
        flush, self.ready, self.reused = Flush(items=items, reused=self.reused, waiting=waiting), [], []
        self.writer.submit(flush)

    def _collect(self, flushes: list[Flush]) -> None:
        for flush in flushes:
            for digest in flush.waiting:
                late = self.handed.pop(digest)
                if late:
                    generation_id = flush.ids[digest]
                    self.reused.extend((user_id, generation_id) for user_id in late)
            self.generations += len(flush.items)
            self.stored_users += flush.stored
            logger.debug("fortune batch: stored %d generations and %d results", len(flush.items), flush.stored)

    def _flush_all(self) -> None:
        """Flush, wait for the writer, and repeat while late users of handed generations remain."""
        self._flush()
        while self.writer.outstanding:
            self._collect(self.writer.done(wait=True))
            self._flush()

    @property
    def failed_users(self) -> int:
        return sum(len(job.user_ids) for job in self.failed_jobs.values()) + len(self.unplannable)

    def _note(self, text: str) -> None:
        self.run.notes = f"{self.run.notes}\n{text}".strip()

    def save_counters(self, *, final: bool = False) -> None:
        run = self.run
        run.generated, run.generations, run.failed = self.stored_users, self.generations, self.failed_users
        run.llm_requests, run.tokens_in, run.tokens_out = self.requests, self.tokens_in, self.tokens_out
        run.estimated_cost = self.cost
        run.heartbeat_at = timezone.now()
        run.failure_sample = self._failure_sample()
        fields = ["eligible", "already_present", "generated", "generations", "failed", "llm_requests",
                  "tokens_in", "tokens_out", "estimated_cost", "heartbeat_at", "failure_sample", "notes"]
        if final:
            fields += ["status", "stop_reason", "finished_at"]
        run.save(update_fields=fields)
        self.last_heartbeat = time.monotonic()

    def _failure_sample(self) -> list[dict]:
        sample = []
        for digest, job in self.failed_jobs.items():
            if len(sample) >= FAILURE_SAMPLE_SIZE:
                break
            sample.append({
                "reason": job.error.reason if job.error else "unknown",
                "error": str(job.error)[:200],
                "input": digest[:16],
                "count": len(job.user_ids),
                "user_ids": job.user_ids[:5],
            })
        if self.unplannable and len(sample) < FAILURE_SAMPLE_SIZE:
            sample.append({"reason": REASON_NO_NATAL, "error": "natal pillars could not be computed",
                           "input": "", "count": len(self.unplannable), "user_ids": self.unplannable[:5]})
        return sample

    def _complete(self) -> None:
        run = self.run
        missing = (
            batch_eligible_users(user_id=self.options.user_id)
            .filter(~Exists(FortuneResult.objects.filter(user=OuterRef("pk"), for_date=self.target.target_date)))
            .count()
        )
        failed = self.failed_users
        stop_reason = self.stop.reason if self.stop.is_set else ""
        if self.stop.is_set and self.stop.interrupted:
            status = BatchRun.Status.INTERRUPTED
        elif not failed and not stop_reason and not missing:
            status = BatchRun.Status.SUCCEEDED
        elif self.stored_users == 0 and (failed or stop_reason):
            status = BatchRun.Status.FAILED
        else:
            status = BatchRun.Status.PARTIAL
        if not stop_reason and missing and not failed:
            stop_reason = STILL_MISSING.format(count=missing, target_date=self.target.target_date)
        run.status, run.stop_reason, run.finished_at = status, stop_reason[:255], timezone.now()
        self.save_counters(final=True)
        logger.info("fortune batch %s finished: %s", self.target.target_date, batch_run_summary(run=run))


def batch_run_summary(*, run: BatchRun) -> str:
    """The one-line human summary of a run."""
    duration = run.duration.total_seconds() if run.duration else 0.0
    reasons: dict[str, int] = {}
    for entry in run.failure_sample or []:
        reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + entry.get("count", 1)
    text = (
        f"fortune batch {run.target_date}{' (catch-up)' if run.catch_up else ''}: {run.status} — "
        f"{run.eligible} eligible, {run.already_present} already present, {run.generated} stored, "
        f"{run.failed} failed; {run.generations} generations, {run.llm_requests} LLM requests, "
        f"tokens {run.tokens_in}/{run.tokens_out}, ~${run.estimated_cost}; {duration:.1f} s"
    )
    if reasons:
        text += "; failures: " + ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))
    if run.stop_reason:
        text += f"; stopped: {run.stop_reason}"
    return text


def batch_dry_run(*, options: BatchOptions) -> list[DryRunReport]:
    """What a real run would do, without writing anything or calling the provider."""
    from core.fortunes.prompt import estimate_tokens

    provider = get_provider(name=options.provider_name)
    with batch_locks(base_date=options.base_date):
        if options.user_id is not None:
            batch_user_check(user_id=options.user_id)
        reports = []
        for target in batch_targets(base_date=options.base_date, catch_up_allowed=options.user_id is None):
            counts = batch_plan_counts(target_date=target.target_date, user_id=options.user_id)
            report = DryRunReport(target=target, eligible=counts.eligible, already_present=counts.already_present,
                                  provider=provider.generator)
            new: set[str] = set()
            for page in batch_plan_pages(
                target_date=target.target_date, generator=provider.generator, force=options.force,
                nonce="dry-run" if options.force else "", user_id=options.user_id, page_size=options.page_size,
                compute_stale_natal=True, language=settings.FORTUNE_LANGUAGE,
            ):
                report.to_generate += page.users
                report.unplannable += len(page.unplannable)
                unseen = {d: g for d, g in page.groups.items() if d[:32] not in new}
                stored = generation_ids_by_hash(hashes=unseen) if unseen else {}
                for digest, group in unseen.items():
                    if len(report.sample_user_ids) < 5:
                        report.sample_user_ids.append(group.user_ids[0])
                    if digest in stored:
                        report.reused += len(group.user_ids)
                        continue
                    new.add(digest[:32])
                    report.generations += 1
                    if provider.name != "local":
                        tokens_in, tokens_out = estimate_tokens(group.inp)
                        report.tokens_in += tokens_in
                        report.tokens_out += tokens_out
            report.estimated_cost = batch_cost(tokens_in=report.tokens_in, tokens_out=report.tokens_out)
            reports.append(report)
        return reports


def batch_dry_run_summary(*, report: DryRunReport) -> str:
    target = report.target
    return (
        f"fortune batch dry run {target.target_date}{' (catch-up)' if target.catch_up else ''}: "
        f"{report.eligible} eligible, {report.already_present} already present, {report.to_generate} to generate "
        f"({report.reused} reuse a stored generation), {report.generations} distinct generations = LLM requests, "
        f"~{report.tokens_in}/{report.tokens_out} tokens in/out, ~${report.estimated_cost} with {report.provider}; "
        f"sample user ids {report.sample_user_ids}"
    )


__all__ = [
    "BatchOptions",
    "DryRunReport",
    "StopToken",
    "batch_dry_run",
    "batch_dry_run_summary",
    "batch_generate_daily",
    "batch_run_summary",
    "batch_run_target",
]

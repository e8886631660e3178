"""The celery backend of the nightly batch: the coordinator plans and dispatches chunks, workers
generate and store them, and the database says what is done.

* The coordinator (nightly_run_target_celery, inside the nightly job's lock) plans exactly as the
  threads backend (nightly_plan_pages, reuse of stored generations, dedupe across pages), writes the
  new generations as CeleryChunk rows, sends one task per chunk, and waits — progress and counters
  from the database — until every chunk is done or the run stops. It re-dispatches a chunk whose
  heartbeat went stale (its worker died). Completion is never a chord: Redis chords lose callbacks.
* A worker (celery_chunk_generate, from core.tasks) claims the chunk, skips inputs already stored (a
  re-dispatched chunk asks again only what was in flight when its worker died), generates the rest
  with up to FORTUNE_CELERY_INFLIGHT calls in flight per process under the account limiter
  (core.limiter), stores them as it goes (upserts by input hash), heartbeats the chunk, and adds to
  the run's counters with F() expressions. Its generator threads do network I/O only: the ORM stays
  on the task's thread, so DB connections scale with chunk slots, not with calls in flight.
  Threads rather than AsyncOpenAI: the sync provider and retry module serve both backends, and
  threads cost less client CPU per request at 256 in flight (bench/scale.py --clients-only).

Every time compared across processes (heartbeats, claims, stale cut-offs, the chunks' deadline) is
the database's clock (Now() in the queries), never a process's: a worker whose clock is off by
minutes still heartbeats "now". A chunk nobody claimed within FORTUNE_CELERY_CLAIM_TIMEOUT of its
send is sent again (its message was lost), backing off for chunks that merely wait behind busy
workers; a send that fails is retried (core.resilience) and otherwise left for the next poll, never
raised. A chunk whose task fails stops its own calls still queued or waiting for a slot.
"""

import datetime as dt
import functools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, DurationField, ExpressionWrapper, F, Q, Sum, Value, When
from django.db.models.functions import Greatest, Now
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerOperationalError

from core.fortunes.inputs import GenerationInput
from core.fortunes.pricing import PathUsage, Tier, cost_estimate
from core.fortunes.providers import Provider, ProviderError, get_provider
from core.limiter import LIMITER_NEEDS_REDIS, account_limiter_cached
from core.models import CeleryChunk, NightlyRun
from core.nightly.dates import NightlyTarget
from core.nightly.guards import StopGuards, StopToken
from core.nightly.lifecycle import FAILURE_SAMPLE_SIZE, failure_entry, nightly_run_outcome, unplannable_entry
from core.nightly.lock import nightly_lock_verify
from core.nightly.options import (
    CHUNK_SIZE,
    INVALID_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    CeleryBackendUnavailable,
    NightlyOptions,
)
from core.nightly.plan import nightly_plan_counts, nightly_plan_pages
from core.nightly.progress import ProgressReporter
from core.nightly.store import GeneratedItem, generation_ids_by_hash, nightly_output_store
from core.nightly.summary import nightly_run_summary
from core.resilience import (
    Attempted,
    RetryPolicy,
    call_with_retries,
    db_retried,
    is_transient,
    request_tokens,
    send_with_retries,
)
from fortuna_api.celery import BROKER_NOT_CONFIGURED, app

logger = logging.getLogger("fortuna.nightly")

CHUNK_TASK = "fortuna.celery_chunk_generate"
HEARTBEAT_SECONDS = 2.0  # a working chunk's heartbeat_at is at most this old; a cancel is seen as soon
STALE_SECONDS = 60.0  # a running chunk silent this long is re-dispatched (its worker died)
POLL_SECONDS = 0.5  # the coordinator reads the chunks' progress this often (and sees the last one end)
FLUSH_SECONDS = 1.0  # a worker stores what it generated at least this often
FLUSH_GENERATIONS = 100
CANCEL_GRACE_SECONDS = 10.0  # after a stop, how long the coordinator waits for running chunks

BROKER_UNAVAILABLE = (
    "The celery backend cannot reach its broker at {url} ({error}). Start the broker or fix "
    "CELERY_BROKER_URL; nothing was written. (--backend threads needs no broker.)"
)
NO_WORKER_NOTE = "no celery worker answered a ping at the start: chunks wait in the queue until one starts"
CHUNK_REDISPATCHED = "chunk {index} re-dispatched: its worker's heartbeat is {age:.0f} s old"
CHUNK_ABANDONED = "chunk {index} abandoned after {attempts} workers took it and went silent"
CHUNK_RESENT = "chunk {index} sent again: no worker claimed it {age:.0f} s after it was sent (its message was lost?)"
CHUNK_SEND_FAILED = "chunk {index} could not be sent to the broker ({error}); it is sent again at the next poll"
MAX_RESEND_BACKOFF = 5  # a chunk still unclaimed is sent again after the claim timeout × 2^(sends − 1), up to 2^this
MAX_CHUNK_ATTEMPTS = 5
PAYLOAD_HASH_MISMATCH = "chunk {chunk_id}: an input's hash changed since planning ({expected} != {actual})"


def _seconds_since(field: str) -> ExpressionWrapper:
    """Seconds (a timedelta) from a datetime column to the database's now."""
    return ExpressionWrapper(Now() - F(field), output_field=DurationField())


def _ago(seconds: float):
    """The database's now, less `seconds`: a cut-off on the same clock as every heartbeat."""
    return Now() - dt.timedelta(seconds=seconds)


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def _chunk_task():
    """The chunk task, found by name: core/tasks.py sits above the batch services and calls this module,
    so it is loaded the way a worker loads it (Celery's autodiscovery), not imported from here. The task
    object, not send_task(), so that task_always_eager (tests) runs it in place."""
    if CHUNK_TASK not in app.tasks:
        app.loader.import_default_modules()
    return app.tasks[CHUNK_TASK]


def celery_backend_check(*, rpm: int | None = None, tpm: int | None = None, timeout: float = 3.0) -> None:
    """Raise CeleryBackendUnavailable unless the backend can run: a broker that answers
    (BROKER_UNAVAILABLE, fortuna_api.celery.BROKER_NOT_CONFIGURED) and, when requests or tokens are
    limited (rpm/tpm, else OPENAI_RPM/OPENAI_TPM), Redis for the limiter the workers share
    (core.limiter.LIMITER_NEEDS_REDIS). Call before anything is written."""

    url = settings.CELERY_BROKER_URL
    if not url:
        raise CeleryBackendUnavailable(BROKER_NOT_CONFIGURED)
    limited = (settings.OPENAI_RPM if rpm is None else rpm) or (settings.OPENAI_TPM if tpm is None else tpm)
    if limited and not settings.REDIS_URL:
        raise CeleryBackendUnavailable(LIMITER_NEEDS_REDIS)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
    except Exception as exc:  # kombu raises the transport's own errors (redis, amqp, socket)
        raise CeleryBackendUnavailable(BROKER_UNAVAILABLE.format(url=_redacted(url), error=exc)) from exc


def _broker_error(exc: BaseException) -> bool:
    """A broker that is down, restarting or not answering (kombu wraps the transport's errors)."""
    return isinstance(exc, (BrokerOperationalError, ConnectionError, TimeoutError, OSError)) or isinstance(
        exc, app.connection_for_write().connection_errors)


def chunk_size_check(value: int) -> int:
    if not 1 <= value <= MAX_CHUNK_SIZE:
        raise ValueError(INVALID_CHUNK_SIZE.format(value=value))
    return value


# --- chunk payloads -------------------------------------------------------------------------------


def _encode(inp: GenerationInput, digest: str, user_ids: list[int]) -> list:
    return [inp.year, inp.month, inp.day, inp.hour, inp.gender, inp.language, inp.prompt_version, inp.generator,
            inp.nonce, digest, user_ids]


def _decode(row: list, *, for_date: dt.date, chunk_id: int) -> tuple[GenerationInput, str, list[int]]:
    year, month, day, hour, gender, language, prompt_version, generator, nonce, digest, user_ids = row
    inp = GenerationInput(for_date=for_date, year=year, month=month, day=day, hour=hour, gender=gender,
                          language=language, prompt_version=prompt_version, generator=generator, nonce=nonce)
    if inp.hash != digest:
        raise ValueError(PAYLOAD_HASH_MISMATCH.format(chunk_id=chunk_id, expected=digest[:12], actual=inp.hash[:12]))
    return inp, digest, list(user_ids)


# --- the worker's side ----------------------------------------------------------------------------


class _GenerationPool:
    """Process-wide daemon threads that only call the provider: FORTUNE_CELERY_INFLIGHT calls in flight
    per worker process, shared by the chunks it runs at once (so a chunk's tail never idles the
    process). Made lazily and again after a fork (prefork children)."""

    _lock = threading.Lock()
    _instance: "_GenerationPool | None" = None

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        for n in range(size):
            threading.Thread(target=self._work, name=f"fortune-celery-{n}", daemon=True).start()

    @classmethod
    def get(cls) -> "_GenerationPool":
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


@db_retried("claiming a chunk")
def celery_chunk_claim(*, chunk_id: int, worker: str, stale_seconds: float) -> bool:
    """Take the chunk if it is queued, or running with a stale heartbeat (its worker died)."""
    return bool(CeleryChunk.objects.filter(
        Q(state=CeleryChunk.State.QUEUED) | Q(state=CeleryChunk.State.RUNNING, heartbeat_at__lt=_ago(stale_seconds)),
        pk=chunk_id,
    ).update(state=CeleryChunk.State.RUNNING, worker=worker, heartbeat_at=Now(), attempts=F("attempts") + 1))


class _ChunkWorker:
    def __init__(self, *, chunk: CeleryChunk, remaining: dt.timedelta | None, worker: str, provider: Provider,
                 rpm: int | None, tpm: int | None, max_attempts: int | None) -> None:

        self.chunk = chunk
        self.run = chunk.run
        self.worker = worker
        self.provider = provider
        self.limiter = account_limiter_cached(rpm=rpm, tpm=tpm)
        self.policy = RetryPolicy.from_settings(max_attempts=max_attempts)
        self.stop = threading.Event()
        self.report = ChunkReport(chunk_id=chunk.pk)
        self.deadline = None if remaining is None else time.monotonic() + remaining.total_seconds()
        # Counted into the run when the chunk finishes, so a dead worker's failures are not counted
        # twice when its chunk is re-dispatched (the inputs are asked again).
        self.failures: list[dict] = []
        self.failed_users = 0
        self.retry_rows: list[list] = []
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
        chunk = self.chunk
        jobs: dict[str, tuple[GenerationInput, list[int]]] = {}
        for row in chunk.payload["inputs"]:
            inp, digest, user_ids = _decode(row, for_date=chunk.for_date, chunk_id=chunk.pk)
            jobs[digest] = (inp, user_ids)
        stored = generation_ids_by_hash(hashes=list(jobs)) if jobs else {}
        if stored:
            # A re-dispatch: what the dead worker stored is not asked again; its users are (re)linked,
            # which writes nothing for those whose row exists.
            pairs = [(uid, stored[d]) for d in stored for uid in jobs.pop(d)[1]]
            self.report.reused_inputs = len(stored)
            self._store(items=[], reused=pairs, waiting={}, requests=0)
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

    def _generate_inline(self, jobs: dict) -> None:

        ready: list[tuple[str, object]] = []
        for digest, (inp, _) in jobs.items():
            if self._should_stop():
                self.report.stopped_inputs += 1
                continue
            try:
                ready.append((digest, Attempted(generated=self.provider.generate(inp), error=None, attempts=0)))
            except ProviderError as exc:
                ready.append((digest, Attempted(generated=None, error=exc, attempts=0)))
            if len(ready) >= FLUSH_GENERATIONS:
                self._take(ready, jobs)
                ready = []
                self._heartbeat()
        self._take(ready, jobs)

    def _generate_pooled(self, jobs: dict) -> None:
        pool = _GenerationPool.get()
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
            if ready and (len(ready) >= FLUSH_GENERATIONS or now - last_flush >= FLUSH_SECONDS or not waiting):
                self._take(ready, jobs)
                ready, last_flush = [], now
            if now - self.last_heartbeat >= HEARTBEAT_SECONDS:
                self._heartbeat()
            self._should_stop()
        self._take(ready, jobs)

    def _take(self, ready: list, jobs: dict) -> None:
        """Store a batch of outcomes: generations and their users in one transaction, counters with F()."""
        items, waiting, requests, billed = [], {}, 0, [0, 0]
        for digest, outcome in ready:
            if isinstance(outcome, BaseException):
                raise outcome
            inp, user_ids = jobs[digest]
            requests += outcome.attempts
            for _tier, tokens_in, tokens_out in outcome.billed_failures:  # invalid answers, billed all the same
                billed[0] += tokens_in
                billed[1] += tokens_out
            if outcome.generated is not None:
                items.append(GeneratedItem(inp=inp, hash=digest, generated=outcome.generated))
                waiting[digest] = user_ids
            elif outcome.stopped:
                self.report.stopped_inputs += 1
            else:
                self.report.failed_inputs += 1
                self.failed_users += len(user_ids)
                error = outcome.error
                if error is not None and is_transient(error):
                    self.retry_rows.append(_encode(inp, digest, user_ids))
                if len(self.failures) < FAILURE_SAMPLE_SIZE:
                    self.failures.append(failure_entry(error=error, digest=digest, user_ids=user_ids))
        if items or requests:
            self._store(items=items, reused=[], waiting=waiting, requests=requests, billed=billed)

    @db_retried("storing a chunk's fortunes", atomic=True)
    def _store(self, *, items: list, reused: list, waiting: dict, requests: int,
               billed: tuple[int, int] | list[int] = (0, 0)) -> None:

        stored = 0
        if items or reused:
            _, stored = nightly_output_store(items=items, reused=reused, waiting=waiting, for_date=self.chunk.for_date,
                                           provider=self.provider.name, model=self.provider.model,
                                           replace=self.run.forced)
        tokens_in = sum(item.generated.tokens_in for item in items) + billed[0]
        tokens_out = sum(item.generated.tokens_out for item in items) + billed[1]
        if self.provider.name == "local":
            requests = 0  # no LLM
        NightlyRun.objects.filter(pk=self.run.pk).update(
            generated=F("generated") + stored, generations=F("generations") + len(items),
            llm_requests=F("llm_requests") + requests, tokens_in=F("tokens_in") + tokens_in,
            tokens_out=F("tokens_out") + tokens_out,
            estimated_cost=F("estimated_cost") + cost_estimate(model=self.provider.model, tier=Tier.STANDARD,
                                                                 tokens_in=tokens_in, tokens_out=tokens_out),
        )
        self.report.generated_inputs += len(items)
        self.report.stored_users += stored
        self.report.requests += requests
        CeleryChunk.objects.filter(pk=self.chunk.pk, worker=self.worker).update(
            stored_inputs=F("stored_inputs") + len(items), heartbeat_at=Now())

    @db_retried("a chunk's heartbeat")
    def _heartbeat(self) -> None:
        """Tell the coordinator we live; stop if the chunk was cancelled or taken over."""
        self.last_heartbeat = time.monotonic()
        running = CeleryChunk.objects.filter(pk=self.chunk.pk, worker=self.worker, state=CeleryChunk.State.RUNNING)
        alive = running.update(
            heartbeat_at=Now())
        if not alive and not self.stop.is_set():
            logger.warning("fortune chunk %s: cancelled or taken over; stopping", self.chunk.pk)
            self.stop.set()

    def _should_stop(self) -> bool:
        if not self.stop.is_set() and self.deadline is not None and time.monotonic() >= self.deadline:
            self.stop.set()
        return self.stop.is_set()

    @db_retried("finishing a chunk", atomic=True)
    def _finish(self) -> None:
        state = CeleryChunk.State.CANCELLED if self.report.stopped_inputs else CeleryChunk.State.DONE
        with transaction.atomic():
            mine = CeleryChunk.objects.filter(pk=self.chunk.pk, worker=self.worker).update(
                state=Case(When(state=CeleryChunk.State.CANCELLED, then=Value(CeleryChunk.State.CANCELLED)),
                           default=Value(state)),
                finished_at=Now(), heartbeat_at=Now(), failed_users=self.failed_users,
                failure_sample=self.failures, retry_inputs=self.retry_rows)
            if mine and self.failed_users:
                NightlyRun.objects.filter(pk=self.run.pk).update(failed=F("failed") + self.failed_users)


def celery_worker_warm_up() -> None:
    """What a worker process would otherwise do in its first chunk: import and build the provider's
    client (the SDK's import alone is a noticeable part of a second). Called when a worker process
    starts; a provider that cannot be built now is reported by the chunks, not here."""
    try:
        get_provider()
    except Exception:  # noqa: BLE001 - e.g. no OPENAI_API_KEY on a local-provider worker
        logger.debug("fortune worker warm-up: no provider built", exc_info=True)


@db_retried("loading a claimed chunk")
def _chunk_load(*, chunk_id: int) -> CeleryChunk:
    """The chunk with its run, and `left`: the time to its deadline by the database's clock (None
    without one). Retried like every step, so a restart right after the claim costs a pause, not the
    chunk (a failed task would leave it running until the stale cut-off)."""
    return CeleryChunk.objects.select_related("run").annotate(
        left=ExpressionWrapper(F("deadline_at") - Now(), output_field=DurationField())).get(pk=chunk_id)


def celery_chunk_generate(
    *, chunk_id: int, stale_seconds: float = STALE_SECONDS, rpm: int | None = None, tpm: int | None = None,
    max_attempts: int | None = None,
) -> ChunkReport:
    """Generate and store one chunk (the Celery task's body). Safe to run twice: the claim lets one
    worker at a time have it, and a second run only asks what is not stored yet."""
    worker = _worker_name()
    if not celery_chunk_claim(chunk_id=chunk_id, worker=worker, stale_seconds=stale_seconds):
        logger.info("fortune chunk %s: done, cancelled or running elsewhere; skipped", chunk_id)
        return ChunkReport(chunk_id=chunk_id, skipped=True)
    chunk = _chunk_load(chunk_id=chunk_id)
    provider = get_provider(name=chunk.run.provider)
    report = _ChunkWorker(chunk=chunk, remaining=chunk.left, worker=worker, provider=provider, rpm=rpm, tpm=tpm,
                          max_attempts=max_attempts).execute()
    logger.info("fortune chunk %s: %d generated, %d reused, %d failed, %d stopped; %d users stored",
                chunk_id, report.generated_inputs, report.reused_inputs, report.failed_inputs, report.stopped_inputs,
                report.stored_users)
    return report


# --- the coordinator's side -----------------------------------------------------------------------


@dataclass
class _Plan:
    chunk_of: dict[str, int] = field(default_factory=dict)  # hash -> chunk index, for dedupe across pages
    late: dict[str, list[int]] = field(default_factory=dict)  # hash -> users planned after its chunk was sent
    buffer: list[list] = field(default_factory=list)
    buffer_users: int = 0
    chunks: int = 0
    inputs: int = 0


class _Coordinator:
    def __init__(self, *, run: NightlyRun, target: NightlyTarget, options: NightlyOptions, provider: Provider,
                 stop: StopToken, deadline: float,
                 chunk_size: int, stale_seconds: float, poll_seconds: float) -> None:
        self.run = run
        self.target = target
        self.options = options
        self.provider = provider
        self.stop = stop
        self.deadline = deadline
        self.seen_chunks: set[int] = set()  # finished chunks the provider-down breaker has counted
        self.chunk_size = chunk_size_check(chunk_size)
        self.stale_seconds = stale_seconds
        self.poll_seconds = poll_seconds
        self.replace = options.force
        self.plan = _Plan()
        self.unplannable: list[int] = []
        budget = options.max_cost if options.max_cost is not None else settings.FORTUNE_MAX_COST_PER_RUN
        # The threads backend's stop rules: deadline, budget (from the workers' token counts in the
        # database) and the provider-down streak (from the finished chunks' failures).
        self.guards = StopGuards(stop=stop, deadline=deadline, max_runtime_minutes=options.max_runtime_minutes,
                                 budget=Decimal(budget or 0), model=provider.model)
        # On the database's clock, which the workers compare it with.
        db_now = NightlyRun.objects.filter(pk=run.pk).annotate(db_now=Now()).values_list("db_now", flat=True).get()
        self.deadline_at = db_now + dt.timedelta(seconds=max(0.0, deadline - time.monotonic()))
        self.claim_timeout = float(settings.FORTUNE_CELERY_CLAIM_TIMEOUT)
        self.unsent: dict[int, int] = {}  # chunk id -> index: sends that failed, tried again at each poll
        self.task_kwargs = {"stale_seconds": stale_seconds, "rpm": options.rpm, "tpm": options.tpm,
                            "max_attempts": options.max_attempts}
        self.progress: ProgressReporter | None = None
        self.last_poll = 0.0

    def execute(self) -> NightlyRun:
        run, target = self.run, self.target
        counts = nightly_plan_counts(target_date=target.target_date, user_id=self.options.user_id)
        total = counts.eligible if self.replace else counts.eligible - counts.already_present
        NightlyRun.objects.filter(pk=run.pk).update(eligible=counts.eligible, already_present=counts.already_present,
                                                  heartbeat_at=Now())
        run.eligible, run.already_present = counts.eligible, counts.already_present
        self.progress = ProgressReporter(
            total=total, stream=self.options.progress_stream, is_tty=self.options.progress_is_tty,
            interval=self.options.progress_interval, label=f"fortunes {target.target_date}",
        )
        if not self._workers_answer():
            self._note(NO_WORKER_NOTE)
        pages = nightly_plan_pages(
            target_date=target.target_date, generator=self.provider.generator, force=self.replace,
            nonce=f"force-run-{run.pk}" if self.replace else "", user_id=self.options.user_id,
            page_size=self.options.page_size, language=settings.FORTUNE_LANGUAGE,
        )
        for page in pages:
            if self._stopping():
                break
            self._take_page(page)
            self._poll()
        if not self._stopping():
            self._send_buffer()
        self._wait()
        if not self._stopping() and self._retry_round():
            self._wait()
        if self.stop.is_set:
            self._cancel()
        self._store_late()
        done, failed = NightlyRun.objects.filter(pk=self.run.pk).values_list("generated", "failed").get()
        self.progress.update(done=done, failed=failed)
        self.progress.close()
        return self._complete()

    # --- planning and dispatch --------------------------------------------------------------
    def _take_page(self, page) -> None:
        plan = self.plan
        if page.unplannable:
            self.unplannable.extend(page.unplannable)
            NightlyRun.objects.filter(pk=self.run.pk).update(failed=F("failed") + len(page.unplannable))
        fresh = {}
        for digest, group in page.groups.items():
            if digest in plan.chunk_of:
                plan.late.setdefault(digest, []).extend(group.user_ids)
            else:
                fresh[digest] = group
        stored = generation_ids_by_hash(hashes=list(fresh)) if fresh else {}
        reused = [(uid, stored[d]) for d in stored for uid in fresh.pop(d).user_ids]
        if reused:
            _, written = nightly_output_store(items=[], reused=reused, waiting={}, for_date=self.target.target_date,
                                            provider=self.provider.name, model=self.provider.model,
                                            replace=self.replace)
            NightlyRun.objects.filter(pk=self.run.pk).update(generated=F("generated") + written)
        for digest, group in fresh.items():
            plan.chunk_of[digest] = plan.chunks
            plan.buffer.append(_encode(group.inp, digest, group.user_ids))
            plan.buffer_users += len(group.user_ids)
            if len(plan.buffer) >= self.chunk_size:
                self._send_buffer()

    def _send_buffer(self) -> None:
        plan = self.plan
        if not plan.buffer:
            return
        chunk = CeleryChunk.objects.create(
            run=self.run, index=plan.chunks, for_date=self.target.target_date, payload={"inputs": plan.buffer},
            inputs=len(plan.buffer), users=plan.buffer_users, deadline_at=self.deadline_at,
        )
        plan.inputs += len(plan.buffer)
        plan.chunks += 1
        plan.buffer, plan.buffer_users = [], 0
        self._dispatch(chunk.pk, chunk.index)

    def _dispatch(self, chunk_id: int, index: int) -> bool:
        """Send the chunk's task. A broker that fails past the retries leaves it in self.unsent (tried
        again at each poll, as a broker down for longer would make every send wait): never raised."""
        # heartbeat_at of a queued chunk: when it was last sent (the claim timeout counts from there).
        CeleryChunk.objects.filter(pk=chunk_id).update(heartbeat_at=Now())
        if self.unsent:
            self.unsent.setdefault(chunk_id, index)  # the broker failed moments ago: behind the older ones
            return False
        return self._send(chunk_id, index)

    def _send(self, chunk_id: int, index: int) -> bool:
        task = _chunk_task()
        try:
            # kombu's own retry off (it waits seconds before giving up): core.resilience retries.
            send_with_retries(lambda: task.apply_async(kwargs={"chunk_id": chunk_id, **self.task_kwargs},
                                                       retry=True, retry_policy={"max_retries": 0}),
                              retryable=_broker_error)
        except Exception as exc:
            if not _broker_error(exc):
                raise
            if chunk_id not in self.unsent:
                logger.warning("fortune batch: %s", CHUNK_SEND_FAILED.format(index=index, error=exc))
            self.unsent.setdefault(chunk_id, index)
            return False
        self.unsent.pop(chunk_id, None)
        CeleryChunk.objects.filter(pk=chunk_id).update(dispatches=F("dispatches") + 1)
        return True

    def _send_unsent(self) -> None:
        """The sends that failed, oldest first, while the broker takes them."""
        for chunk_id, index in list(self.unsent.items()):
            if not CeleryChunk.objects.filter(pk=chunk_id, state=CeleryChunk.State.QUEUED).update(heartbeat_at=Now()):
                self.unsent.pop(chunk_id)  # cancelled meanwhile
                continue
            if not self._send(chunk_id, index):
                return

    def _resend_unclaimed(self) -> None:
        """Queued chunks no worker claimed within the claim timeout of their send: sent again, the next
        time after twice as long (a chunk waiting behind busy workers is not sent over and over)."""
        overdue = (CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.QUEUED,
                                             heartbeat_at__lt=_ago(self.claim_timeout))
                   .exclude(pk__in=list(self.unsent)).annotate(age=_seconds_since("heartbeat_at"))
                   .values_list("pk", "index", "dispatches", "age"))
        for chunk_id, index, dispatches, age in overdue:
            wait = self.claim_timeout * 2 ** min(max(dispatches - 1, 0), MAX_RESEND_BACKOFF)
            if age.total_seconds() < wait:
                continue
            logger.warning("fortune batch: %s", CHUNK_RESENT.format(index=index, age=age.total_seconds()))
            self._dispatch(chunk_id, index)

    def _workers_answer(self) -> bool:

        if app.conf.task_always_eager:
            return True
        try:
            # limit=1: back at the first answer (without it, ping always waits the whole timeout).
            return bool(app.control.ping(timeout=1.0, limit=1))
        except Exception:  # noqa: BLE001 - a broker without remote control: only a note is lost
            logger.debug("fortune batch: celery ping failed", exc_info=True)
            return False

    def _retry_round(self) -> bool:
        """One more round, after options.retry_cooldown, for inputs that failed for a transient reason
        (as the threads backend does); their users stop counting as failed. True if chunks were sent."""
        chunks = list(CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.DONE).exclude(retry_inputs=[])
                      .values_list("pk", "retry_inputs", "failure_sample", "failed_users"))
        if not chunks:
            return False
        rows = [row for _, retry, _, _ in chunks for row in retry]
        cooldown = self.options.retry_cooldown
        logger.info("fortune batch: %d generations failed for transient reasons; one more round in %.1f s",
                    len(rows), cooldown)
        self._note(f"retry round for {len(rows)} generations after {cooldown:g} s")
        if self.stop.event.wait(cooldown) or self._stopping():
            return False
        users = 0
        with transaction.atomic():
            for chunk_id, retry, sample, failed_users in chunks:
                retried = {row[9][:16] for row in retry}
                moved = sum(len(row[10]) for row in retry)
                users += moved
                CeleryChunk.objects.filter(pk=chunk_id).update(
                    retry_inputs=[], failed_users=max(0, failed_users - moved),
                    failure_sample=[entry for entry in sample if entry.get("input") not in retried])
            NightlyRun.objects.filter(pk=self.run.pk).update(failed=F("failed") - users)
        for row in rows:
            self.plan.buffer.append(row)
            self.plan.buffer_users += len(row[10])
            if len(self.plan.buffer) >= self.chunk_size:
                self._send_buffer()
        self._send_buffer()
        return True

    # --- waiting ------------------------------------------------------------------------------
    def _wait(self) -> None:
        """Until every chunk is done or cancelled, or the run stops."""
        while not self._stopping() and self._poll(force=True):
            self.stop.event.wait(self.poll_seconds)

    def _stopping(self) -> bool:

        if not self.guards.should_stop() and self.guards.budget:
            tokens_in, tokens_out = (NightlyRun.objects.filter(pk=self.run.pk)
                                     .values_list("tokens_in", "tokens_out").get())
            self.guards.spent(usage={"standard": PathUsage(tokens_in=tokens_in, tokens_out=tokens_out)})
        return self.guards.stopped

    @db_retried("polling the run's chunks")
    def _poll(self, *, force: bool = False) -> bool:
        """Heartbeat the run, draw progress, re-dispatch stale chunks; True while chunks are open."""
        now = time.monotonic()
        if not force and now - self.last_poll < self.poll_seconds:
            return True
        self.last_poll = now
        self._send_unsent()
        nightly_lock_verify(target_date=self.target.target_date)  # a run that lost its lock stops (NightlyLockLost)
        stale = list(CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.RUNNING,
                                               heartbeat_at__lt=_ago(self.stale_seconds))
                     .annotate(age=_seconds_since("heartbeat_at"))
                     .values_list("pk", "index", "heartbeat_at", "attempts", "age"))
        for chunk_id, index, heartbeat_at, attempts, age in stale:
            if attempts >= MAX_CHUNK_ATTEMPTS:
                # A chunk that kills or crashes every worker that takes it: give up on it, not on the night.
                CeleryChunk.objects.filter(pk=chunk_id, state=CeleryChunk.State.RUNNING).update(
                    state=CeleryChunk.State.CANCELLED, finished_at=Now())
                self._note(CHUNK_ABANDONED.format(index=index, attempts=attempts))
                logger.error("fortune batch: %s", CHUNK_ABANDONED.format(index=index, attempts=attempts))
                continue
            requeued = CeleryChunk.objects.filter(pk=chunk_id, state=CeleryChunk.State.RUNNING,
                                                 heartbeat_at=heartbeat_at).update(state=CeleryChunk.State.QUEUED)
            if requeued:
                logger.warning("fortune batch: %s", CHUNK_REDISPATCHED.format(index=index, age=age.total_seconds()))
                self._dispatch(chunk_id, index)
        self._resend_unclaimed()
        self._check_provider()
        # In flight: the inputs of claimed chunks not stored yet (a worker has them, or holds them to retry).
        in_flight = (CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.RUNNING)
                     .aggregate(n=Sum(Greatest(F("inputs") - F("stored_inputs"), 0)))["n"] or 0)
        NightlyRun.objects.filter(pk=self.run.pk).update(heartbeat_at=Now(), in_flight=in_flight)
        done, failed = NightlyRun.objects.filter(pk=self.run.pk).values_list("generated", "failed").get()
        self.progress.update(done=done, failed=failed)
        return CeleryChunk.objects.filter(run=self.run).exclude(
            state__in=[CeleryChunk.State.DONE, CeleryChunk.State.CANCELLED]).exists()

    def _check_provider(self) -> None:
        """Feed the finished chunks' failures to the provider-down breaker, as the threads backend feeds
        its generations': a chunk that stored something breaks the streak."""

        finished = (CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.DONE)
                    .exclude(pk__in=self.seen_chunks).order_by("finished_at", "pk")
                    .values_list("pk", "stored_inputs", "failure_sample"))
        for chunk_id, stored_inputs, sample in finished:
            self.seen_chunks.add(chunk_id)
            if self.guards.stopped:
                return
            if stored_inputs:
                self.guards.streak_broken()
            for entry in sample:
                self.guards.failed(reason=entry["reason"])

    def _cancel(self) -> None:
        """Stop the run's open chunks: queued ones are never started, running ones stop at their next
        heartbeat (what they generated is stored). Waits up to CANCEL_GRACE_SECONDS for them."""
        open_states = [CeleryChunk.State.QUEUED, CeleryChunk.State.RUNNING]
        CeleryChunk.objects.filter(run=self.run, state__in=open_states).update(
            state=CeleryChunk.State.CANCELLED, finished_at=Now())
        self.unsent.clear()
        grace_end = time.monotonic() + min(CANCEL_GRACE_SECONDS, self.options.grace_seconds)
        while time.monotonic() < grace_end:
            if not CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.CANCELLED,
                                             heartbeat_at__gt=_ago(FLUSH_SECONDS * 2)).exists():
                break
            time.sleep(0.2)

    def _store_late(self) -> None:
        """Users planned after their input's chunk was sent: linked to its stored generation."""
        late = self.plan.late
        if not late:
            return
        ids = generation_ids_by_hash(hashes=list(late))
        pairs = [(uid, ids[d]) for d, users in late.items() if d in ids for uid in users]
        missing = sum(len(users) for d, users in late.items() if d not in ids)
        written = 0
        if pairs:
            _, written = nightly_output_store(items=[], reused=pairs, waiting={}, for_date=self.target.target_date,
                                            provider=self.provider.name, model=self.provider.model,
                                            replace=self.replace)
        # Late users of a failed input failed with it; those of a stopped one are left for the next run.
        failed_hashes = {entry["input"] for entry in self._chunk_failures()}
        failed = sum(len(users) for d, users in late.items() if d not in ids and d[:16] in failed_hashes)
        NightlyRun.objects.filter(pk=self.run.pk).update(generated=F("generated") + written,
                                                         failed=F("failed") + failed)
        logger.debug("fortune batch: %d late users linked, %d without a stored generation", written, missing)

    def _chunk_failures(self) -> list[dict]:
        sample: list[dict] = []
        for entries in CeleryChunk.objects.filter(run=self.run).exclude(failure_sample=[]).values_list(
                "failure_sample", flat=True):
            sample.extend(entries)
        return sample

    @db_retried("saving the run's notes")
    def _note(self, text: str) -> None:
        self.run.notes = f"{self.run.notes}\n{text}".strip()
        NightlyRun.objects.filter(pk=self.run.pk).update(notes=self.run.notes)

    @db_retried("finishing the run's NightlyRun row")
    def _complete(self) -> NightlyRun:

        run = self.run
        run.refresh_from_db()
        sample = self._chunk_failures()[:FAILURE_SAMPLE_SIZE]
        if self.unplannable and len(sample) < FAILURE_SAMPLE_SIZE:
            sample.append(unplannable_entry(self.unplannable))
        run.status, run.stop_reason = nightly_run_outcome(
            target=self.target, user_id=self.options.user_id, failed=run.failed, stored=run.generated,
            stop_reason=self.guards.reason, interrupted=self.guards.interrupted)
        run.finished_at = timezone.now()
        run.failure_sample, run.heartbeat_at, run.in_flight = sample, timezone.now(), 0
        # Only the coordinator's own fields: workers still add to the counters with F() expressions.
        run.save(update_fields=["status", "stop_reason", "finished_at", "failure_sample", "heartbeat_at", "notes",
                                "in_flight"])
        logger.info("fortune batch %s finished: %s", self.target.target_date, nightly_run_summary(run=run))
        return run


def nightly_run_target_celery(
    *, run: NightlyRun, target: NightlyTarget, options: NightlyOptions, provider: Provider, stop: StopToken,
    deadline: float, chunk_size: int = CHUNK_SIZE, stale_seconds: float = STALE_SECONDS,
    poll_seconds: float = POLL_SECONDS,
) -> NightlyRun:
    """One target date on Celery workers, for the NightlyRun the caller created (holding the target's
    lock, as for the threads backend). Returns the run with its final status and counters.

    `options` are the night's (force, user_id, rpm, tpm, max_attempts, max_cost, page_size,
    max_runtime_minutes, retry_cooldown, grace_seconds, progress_*); `deadline` a time.monotonic()
    value. Call celery_backend_check() before creating the run: a broker that is down must leave
    nothing written (core.nightly.nightly does both, for --backend celery).
    """
    if connection.in_atomic_block:
        # Workers are other processes: they cannot see rows of an open transaction.
        raise RuntimeError("nightly_run_target_celery needs autocommit: workers cannot see uncommitted chunks")
    return _Coordinator(run=run, target=target, options=options, provider=provider, stop=stop, deadline=deadline,
                        chunk_size=chunk_size, stale_seconds=stale_seconds, poll_seconds=poll_seconds).execute()


def celery_chunk_counts(*, run: NightlyRun) -> dict[str, int]:
    """state -> number of the run's chunks (for progress displays and tests)."""
    rows = CeleryChunk.objects.filter(run=run).values("state").annotate(n=Count("pk"))
    return {row["state"]: row["n"] for row in rows}

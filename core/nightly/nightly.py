"""The nightly batch as one service: lock, refresh natal pillars, one run per target date
(catch-up first), run reports, retention, connections closed. The command and a Celery task call
nightly_fortunes(); nothing the night needs lives in either.

Extension points: `backend` makes a target's generations in this process (BackendFactory: the thread
pool or inline), and `hooks` run before and after each target (e.g. collect/cancel a batch submitted
the night before, submit the next one). With options.backend "celery" a target's generations are
made by Celery workers instead (core.nightly.celery_chunks), under the same lock, plan and NightlyRun.
"""

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.utils import timezone

from core.fortunes.inputs import GenerationInput
from core.fortunes.pricing import PriceUnknown, Tier, cost_estimate, price_get
from core.fortunes.prompt import estimate_tokens
from core.fortunes.providers import Provider, ProviderConfigError, get_provider
from core.limiter import account_limiter
from core.models import NightlyRun
from core.nightly.dates import NightlyTarget, database_today, nightly_lock_dates, nightly_targets, nightly_today
from core.nightly.guards import StopGuards, StopToken
from core.nightly.hooks import NightHooks
from core.nightly.lifecycle import CRASHED, RunRecorder, nightly_run_create, nightly_runs_mark_stale
from core.nightly.lock import NightlyLocked, NightlyLockLost, nightly_lock
from core.nightly.notify import run_report_send
from core.nightly.openai_batch_ahead import night_hooks, openai_batch_ahead_check, openai_batch_ahead_plan
from core.nightly.options import BACKEND_CELERY, NightlyOptions
from core.nightly.plan import UserNotEligible, nightly_plan_counts, nightly_plan_pages, nightly_user_check
from core.nightly.pool import GenerationBackend, InlineBackend, ThreadBackend
from core.nightly.process import (
    connections_close,
    gc_paused,
    gc_skip_at_exit,
    nightly_statement_timeout,
    stop_on_signals,
)
from core.nightly.progress import ProgressReporter
from core.nightly.retention import fortunes_prune
from core.nightly.scheduler import Scheduler
from core.nightly.store import ResultWriter, generation_ids_by_hash, writer_threaded
from core.nightly.summary import DryRunReport, RunSummary
from core.resilience import RetryPolicy, call_with_retries, request_tokens
from core.services.natal import users_refresh_natal

logger = logging.getLogger("fortuna.nightly")

NOTE_CATCH_UP = "catch-up: no successful run for {target_date} (missed night or a start after KST midnight)"
NOTE_INLINE = "local provider: generated inline on the main thread (no network, so no thread pool)"
NOTE_NATAL_FAILED = "natal refresh failed ({error}); users without pillars are counted failed"

BackendFactory = Callable[..., GenerationBackend]  # (*, provider, options, guards) -> backend


def generation_backend(*, provider: Provider, options: NightlyOptions, guards: StopGuards) -> GenerationBackend:
    """The default backend: inline for the local provider, else a thread pool calling it with retries
    under the account's limiter (core.limiter: shared in Redis with the web's on-demand path and any
    other process when REDIS_URL is set, else this process's own). The threads only call the provider
    and the limiter, never the ORM: DB connections do not grow with --workers."""
    if provider.name == "local":
        return InlineBackend(provider=provider)
    policy = RetryPolicy.from_settings(max_attempts=options.max_attempts)
    # A Redis down at the start or later: the limiter carries on in-process at its share of the account.
    limiter = account_limiter(rpm=options.rpm, tpm=options.tpm)

    def call(inp: GenerationInput):
        return call_with_retries(functools.partial(provider.generate, inp), policy=policy, limiter=limiter,
                                 tokens=request_tokens(limiter, inp), stop=guards.stop.event,
                                 deadline=guards.deadline)

    return ThreadBackend(workers=options.workers, call=call)


@dataclass
class NightReport:
    runs: list[NightlyRun] = field(default_factory=list)
    plans: list[DryRunReport] = field(default_factory=list)  # dry run only
    lines: list[str] = field(default_factory=list)  # the hooks' (Batch API) and the dry run's day-ahead lines
    pruned: int | None = None  # fortunes pruned; None when pruning was skipped or failed
    # Targets the night never started a run for (stopped or crashed first), each with its reason.
    unrun: list[RunSummary] = field(default_factory=list)

    @property
    def summaries(self) -> list[RunSummary]:
        return [RunSummary.from_run(run) for run in self.runs] + self.unrun

    @property
    def incomplete(self) -> list[RunSummary]:
        return [summary for summary in self.summaries if not summary.succeeded]


@contextmanager
def nightly_locks(*, base_date: dt.date | None, ahead: bool = False) -> Iterator[None]:
    """Every target date this run may touch, locked before any planning (raises NightlyLocked)."""
    with ExitStack() as stack:
        for target_date in nightly_lock_dates(base_date=base_date, ahead=ahead):
            stack.enter_context(nightly_lock(target_date=target_date))
        yield


def nightly_fortunes(
    *, options: NightlyOptions, stop: StopToken | None = None, backend: BackendFactory = generation_backend,
    hooks: NightHooks | None = None,
) -> NightReport:
    """The whole night (or, with options.dry_run, what it would do, writing nothing).

    Raises NightlyLocked (another run is active) and UserNotEligible with nothing written or reported.
    Whatever else ends the night — a crash, a lost lock, a stop — every run it started is finished
    (none left `running`) and reported with its status and reason before the error is raised; a
    target it never started is reported too (NightReport.unrun).
    """
    stop = stop or StopToken()
    hooks = hooks or night_hooks(options=options, stop=stop)
    gc_skip_at_exit()
    night = NightReport()
    try:
        if options.dry_run:
            return nightly_plan(options=options)
        with stop_on_signals(stop) if options.handle_signals else nullcontext():
            nightly_generate(options=options, stop=stop, backend=backend, hooks=hooks, night=night)
    except BaseException as exc:
        if options.dry_run or _night_refused(exc):
            raise
        connections_close()  # a broken connection is replaced by a fresh one for what follows
        _night_crashed(night=night, options=options, error=exc)
        raise
    finally:
        connections_close()
    if stop.is_set and night.unrun:
        logger.warning("fortune batch: stopped before %s: %s",
                       ", ".join(str(summary.target_date) for summary in night.unrun), stop.reason)
    _night_report(night=night)
    if night.runs and options.user_id is None:
        night.pruned = _prune(written=[run.target_date for run in night.runs])
    night.lines = hooks.report_lines()
    return night


# Refused before anything was written: not a bad night (another run is doing it, or a wrong --user-id).
NIGHT_REFUSALS = (NightlyLocked, UserNotEligible)


def _night_refused(exc: BaseException) -> bool:
    # A lost lock is a NightlyLocked too, but its run had started and wrote: a bad night, to settle and report.
    return isinstance(exc, NIGHT_REFUSALS) and not isinstance(exc, NightlyLockLost)
NIGHT_NOT_STARTED = "{reason} (before this date's run started)"


def _night_report(*, night: NightReport) -> None:
    for run in night.runs:
        run_report_send(run=run)
    for summary in night.unrun:
        run_report_send(summary=summary)


def _night_crashed(*, night: NightReport, options: NightlyOptions, error: BaseException) -> None:
    """A night ended by an exception still finishes every run it started and reports the night."""
    reason = CRASHED.format(error=f"{type(error).__name__}: {error}")[:255]
    for run in night.runs:
        _run_settle(run=run, reason=reason)
    if not night.runs:
        base = options.base_date or nightly_today()
        night.unrun.append(RunSummary.for_night(
            base_date=base, target_date=base + dt.timedelta(days=1), status=NightlyRun.Status.FAILED,
            reason=NIGHT_NOT_STARTED.format(reason=reason)))
    try:
        _night_report(night=night)
    finally:
        connections_close()


def _run_settle(*, run: NightlyRun, reason: str) -> None:
    """Make sure `run` is not left `running` (its own crash handling may not have reached the
    database): failed with the night's reason unless it already finished."""
    try:
        NightlyRun.objects.filter(pk=run.pk, status=NightlyRun.Status.RUNNING).update(
            status=NightlyRun.Status.FAILED, stop_reason=reason, finished_at=timezone.now())
        run.refresh_from_db()
    except Exception:  # the database is gone: the next run marks it stale; the report still goes out
        logger.exception("fortune batch %s: could not mark run %s failed", run.target_date, run.pk)
        if run.status == NightlyRun.Status.RUNNING:
            run.status, run.stop_reason, run.finished_at = NightlyRun.Status.FAILED, reason, timezone.now()


def nightly_generate(
    *, options: NightlyOptions, stop: StopToken, backend: BackendFactory = generation_backend,
    hooks: NightHooks | None = None, night: NightReport | None = None,
) -> list[NightlyRun]:
    """Lock, refresh natal pillars, then one NightlyRun per target (catch-up first). Each run is added
    to night.runs as soon as it exists, and each target a stop left unstarted to night.unrun."""
    hooks = hooks or NightHooks()
    night = night if night is not None else NightReport()
    if options.backend == BACKEND_CELERY:
        _celery_check(options=options)
    # --max-runtime bounds the whole night, catch-up included.
    deadline = time.monotonic() + options.max_runtime_minutes * 60
    with (nightly_statement_timeout(settings.DB_BATCH_STATEMENT_TIMEOUT_MS),
          nightly_locks(base_date=options.base_date, ahead=options.ahead)):
        if options.user_id is not None:
            nightly_user_check(user_id=options.user_id)
        # The deadline also ends flex early (OPENAI_SERVICE_TIER=flex; only this batch path asks for it).
        provider = get_provider(name=options.provider_name, flex_deadline=deadline)
        prices_check(provider=provider, options=options)
        targets = nightly_targets(base_date=options.base_date, catch_up_allowed=options.user_id is None)
        for target in targets:
            nightly_runs_mark_stale(target_date=target.target_date)
        notes = _natal_refresh()
        for target in targets:
            if stop.is_set:
                night.unrun.append(RunSummary.for_night(
                    base_date=target.base_date, target_date=target.target_date,
                    status=NightlyRun.Status.INTERRUPTED if stop.interrupted else NightlyRun.Status.FAILED,
                    reason=NIGHT_NOT_STARTED.format(reason=stop.reason)))
                continue
            hooks.before_target(target=target, provider=provider)
            run = nightly_run_target(target=target, options=options, provider=provider, stop=stop,
                                   deadline=deadline, notes=notes, backend=backend, on_start=night.runs.append)
            hooks.after_target(target=target, provider=provider, run=run)
        return night.runs


def prices_check(*, provider: Provider, options: NightlyOptions) -> None:
    """Every tier this night may use has a price (a cost estimate must not crash the run halfway), and
    day-ahead is possible; raises ProviderConfigError saying what to set."""
    openai_batch_ahead_check(options=options)
    if provider.name == "local":
        return  # no tokens, no cost
    tiers = [Tier.STANDARD]
    if settings.OPENAI_SERVICE_TIER == "flex":
        tiers.append(Tier.FLEX)
    if options.ahead:
        tiers.append(Tier.BATCH)
    try:
        for tier in tiers:
            price_get(model=provider.model, tier=tier)
    except PriceUnknown as exc:
        raise ProviderConfigError(str(exc)) from None


def _natal_refresh() -> list[str]:
    try:
        refreshed = users_refresh_natal()
    except Exception as exc:  # one bad row must not cost every user their fortune
        logger.exception("fortune batch: natal refresh failed")
        return [NOTE_NATAL_FAILED.format(error=exc)]
    if refreshed:
        logger.info("fortune batch: natal pillars refreshed for %d users", refreshed)
    return []


def nightly_run_target(
    *, target: NightlyTarget, options: NightlyOptions, provider: Provider, stop: StopToken, deadline: float,
    notes: list[str] | None = None, backend: BackendFactory = generation_backend,
    on_start: Callable[[NightlyRun], object] | None = None,
) -> NightlyRun:
    """One NightlyRun for one target date (given to on_start as soon as it exists). The caller holds the
    target's lock."""
    notes = list(notes or [])
    if target.catch_up:
        notes.append(NOTE_CATCH_UP.format(target_date=target.target_date))
        logger.warning("fortune batch: %s; filling its gaps first", notes[-1])
    run = nightly_run_create(target=target, options=options, provider=provider, notes=notes)
    if on_start is not None:
        on_start(run)
    if options.backend == BACKEND_CELERY:
        return _run_target_celery(run=run, target=target, options=options, provider=provider, stop=stop,
                                  deadline=deadline)
    budget = options.max_cost if options.max_cost is not None else settings.FORTUNE_MAX_COST_PER_RUN
    guards = StopGuards(stop=stop, deadline=deadline, max_runtime_minutes=options.max_runtime_minutes,
                        budget=Decimal(budget or 0), workers=options.workers, model=provider.model)
    recorder = RunRecorder(run=run)
    scheduler = None
    try:
        counts = nightly_plan_counts(target_date=target.target_date, user_id=options.user_id)
        run.eligible, run.already_present = counts.eligible, counts.already_present
        total = counts.eligible if options.force else counts.eligible - counts.already_present
        generations = writer = None
        try:
            generations = backend(provider=provider, options=options, guards=guards)
            logger.info(
                "fortune batch %s (base %s%s): %d eligible, %d already present, %d to do; provider %s, %s",
                target.target_date, target.base_date, ", catch-up" if target.catch_up else "", counts.eligible,
                counts.already_present, total, provider.generator,
                "inline" if generations.inline else f"{options.workers} workers",
            )
            if generations.inline:
                recorder.note(NOTE_INLINE)
            recorder.save()
            recorder.progress = ProgressReporter(
                total=total, stream=options.progress_stream, is_tty=options.progress_is_tty,
                interval=options.progress_interval, label=f"fortunes {target.target_date}",
            )
            writer = ResultWriter(
                for_date=target.target_date, provider=provider.name, model=provider.model, replace=options.force,
                threaded=writer_threaded(),
            )
            plan = functools.partial(
                nightly_plan_pages, target_date=target.target_date, generator=provider.generator, force=options.force,
                nonce=f"force-run-{run.pk}" if options.force else "", user_id=options.user_id,
                page_size=options.page_size, language=settings.FORTUNE_LANGUAGE,
            )
            scheduler = recorder.scheduler = Scheduler(
                pages=plan(), replan=lambda user_ids: plan(user_ids=user_ids), lookup=_stored_ids, guards=guards,
                backend=generations, writer=writer,
                max_in_flight=options.page_size, retry_cooldown=options.retry_cooldown,
                grace_seconds=options.grace_seconds, on_tick=recorder.tick, on_note=recorder.note,
            )
            with gc_paused():
                scheduler.run()
        finally:
            if generations is not None:
                generations.close()
            if writer is not None:
                writer.close()  # on a crash, still writes what was queued
            recorder.close_progress()
        recorder.finish(target=target, user_id=options.user_id, stop_reason=guards.reason,
                        interrupted=guards.interrupted)
    except BaseException as exc:
        if scheduler is not None:
            scheduler.abandon()
            scheduler.settle_writer()
        recorder.crash(exc)
        raise
    return run


# --- backend celery (issue 9): the same lock, plan, catch-up and NightlyRun, generated by Celery workers ---


def _celery_check(*, options: NightlyOptions) -> None:
    """Before any lock or write: a broker that is down raises CeleryBackendUnavailable."""
    from core.nightly.celery_chunks import celery_backend_check  # loads the Celery app only when asked for

    celery_backend_check(rpm=options.rpm, tpm=options.tpm)


def _run_target_celery(*, run: NightlyRun, target: NightlyTarget, options: NightlyOptions, provider: Provider,
                       stop: StopToken, deadline: float) -> NightlyRun:
    from core.nightly.celery_chunks import nightly_run_target_celery

    try:
        return nightly_run_target_celery(run=run, target=target, options=options, provider=provider, stop=stop,
                                       deadline=deadline, chunk_size=options.chunk_size)
    except BaseException as exc:
        run.refresh_from_db()  # the workers' counters, added with F() expressions
        RunRecorder(run=run).crash(exc)
        raise


def _stored_ids(hashes) -> dict[str, int]:
    return generation_ids_by_hash(hashes=hashes)


def nightly_plan(*, options: NightlyOptions) -> NightReport:
    """What a real night would do, through the same scheduler in plan-only mode, and (day-ahead on)
    what it would submit for base+2 and cost each way: nothing written, no provider called."""
    provider = get_provider(name=options.provider_name)
    prices_check(provider=provider, options=options)
    estimate = None if provider.name == "local" else estimate_tokens
    with nightly_locks(base_date=options.base_date, ahead=options.ahead):
        if options.user_id is not None:
            nightly_user_check(user_id=options.user_id)
        reports = []
        for target in nightly_targets(base_date=options.base_date, catch_up_allowed=options.user_id is None):
            counts = nightly_plan_counts(target_date=target.target_date, user_id=options.user_id)
            pages = nightly_plan_pages(
                target_date=target.target_date, generator=provider.generator, force=options.force,
                nonce="dry-run" if options.force else "", user_id=options.user_id, page_size=options.page_size,
                compute_stale_natal=True, language=settings.FORTUNE_LANGUAGE,
            )
            tally = Scheduler(pages=pages, lookup=_stored_ids, estimate=estimate).plan()
            reports.append(DryRunReport(
                target=target, eligible=counts.eligible, already_present=counts.already_present,
                to_generate=tally.to_generate, generations=tally.planned, reused=tally.reused_users,
                unplannable=len(tally.unplannable), tokens_in=tally.tokens_in, tokens_out=tally.tokens_out,
                estimated_cost=cost_estimate(model=provider.model, tier=Tier.STANDARD, tokens_in=tally.tokens_in,
                                             tokens_out=tally.tokens_out),
                sample_user_ids=tally.sample_user_ids, provider=provider.generator,
            ))
        lines = []
        if options.ahead:
            lines.append(openai_batch_ahead_plan(base_date=reports[-1].target.base_date, user_id=options.user_id))
        return NightReport(plans=reports, lines=lines)


def _prune(*, written: list[dt.date]) -> int | None:
    """Retention after a night, counted from today by the database's clock, never from --date; the
    dates this night wrote are kept whatever their age."""
    try:
        pruned = fortunes_prune(today=database_today(), retention_days=settings.FORTUNE_RETENTION_DAYS,
                                keep_dates=written)
    except Exception:  # housekeeping never fails the night's fortunes
        logger.exception("fortune retention: pruning failed")
        return None
    else:
        logger.info("fortune retention: pruned %d fortunes older than %d days", pruned,
                    settings.FORTUNE_RETENTION_DAYS)
        return pruned
    finally:
        connections_close()

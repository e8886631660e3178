"""The nightly service: lock every date the night may touch, refresh natal pillars, one run per target
date (catch-up first; core.nightly.run drives each on the night's executor), run reports, retention,
connections closed. The command and a Celery task call nightly_fortunes(); nothing the night needs
lives in either.

Extension points: `executor` picks how a target's inputs become generations (core.nightly.executors:
inline, threads, Celery chunks), and `hooks` run before and after each target (the OpenAI Batch API:
collect/cancel what was submitted the night before, submit the next date).
"""

import datetime as dt
import logging
import time
from contextlib import nullcontext

from django.conf import settings
from django.utils import timezone

from core.fortunes.providers import get_provider
from core.models import NightlyRun
from core.nightly.dates import database_today, nightly_targets, nightly_today
from core.nightly.dry_run import nightly_plan
from core.nightly.executors import ExecutorFactory, executor_check, executor_for
from core.nightly.executors.openai_batch import night_hooks
from core.nightly.guards import StopToken
from core.nightly.hooks import NightHooks
from core.nightly.lifecycle import CRASHED, nightly_runs_mark_stale
from core.nightly.lock import NightlyLocked, NightlyLockLost
from core.nightly.night import NightReport, nightly_locks, prices_check
from core.nightly.notify import run_report_send
from core.nightly.options import NightlyOptions
from core.nightly.plan import UserNotEligible, nightly_user_check
from core.nightly.process import connections_close, gc_skip_at_exit, nightly_statement_timeout, stop_on_signals
from core.nightly.retention import fortunes_prune
from core.nightly.run import nightly_run_target
from core.nightly.summary import RunSummary
from core.services.natal import users_refresh_natal

logger = logging.getLogger("fortuna.nightly")

NOTE_NATAL_FAILED = "natal refresh failed ({error}); users without pillars are counted failed"

def nightly_fortunes(
    *, options: NightlyOptions, stop: StopToken | None = None, executor: ExecutorFactory = executor_for,
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
            nightly_generate(options=options, stop=stop, executor=executor, hooks=hooks, night=night)
    except BaseException as exc:
        if options.dry_run or _night_refused(exc):
            raise
        connections_close()  # a broken connection is replaced by a fresh one for what follows
        _night_crashed(night=night, options=options, error=exc)
        raise
    finally:
        connections_close()
    if stop.is_set and night.unrun:
        logger.warning("nightly run: stopped before %s: %s",
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
        logger.exception("nightly run %s: could not mark run %s failed", run.target_date, run.pk)
        if run.status == NightlyRun.Status.RUNNING:
            run.status, run.stop_reason, run.finished_at = NightlyRun.Status.FAILED, reason, timezone.now()


def nightly_generate(
    *, options: NightlyOptions, stop: StopToken, executor: ExecutorFactory = executor_for,
    hooks: NightHooks | None = None, night: NightReport | None = None,
) -> list[NightlyRun]:
    """Lock, refresh natal pillars, then one NightlyRun per target (catch-up first). Each run is added
    to night.runs as soon as it exists, and each target a stop left unstarted to night.unrun."""
    hooks = hooks or NightHooks()
    night = night if night is not None else NightReport()
    executor_check(options=options)
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
                                   deadline=deadline, notes=notes, executor=executor, on_start=night.runs.append)
            hooks.after_target(target=target, provider=provider, run=run)
        return night.runs


def _natal_refresh() -> list[str]:
    try:
        refreshed = users_refresh_natal()
    except Exception as exc:  # one bad row must not cost every user their fortune
        logger.exception("nightly run: natal refresh failed")
        return [NOTE_NATAL_FAILED.format(error=exc)]
    if refreshed:
        logger.info("nightly run: natal pillars refreshed for %d users", refreshed)
    return []


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

"""One target date's run: its NightlyRun row, the engine (core.nightly.scheduler) over the date's plan
pages with the night's executor and the writer, the row kept in step and finished. Whatever the
executor — inline, threads, Celery chunks — this is the only place a run is driven."""

import functools
import logging
from collections.abc import Callable
from decimal import Decimal

from django.conf import settings

from core.fortunes.providers import Provider
from core.models import NightlyRun
from core.nightly.dates import NightlyTarget
from core.nightly.executors import ExecutorFactory, executor_for
from core.nightly.guards import StopGuards, StopToken
from core.nightly.lifecycle import RunRecorder, nightly_run_create
from core.nightly.options import NightlyOptions
from core.nightly.plan import nightly_plan_counts, nightly_plan_pages
from core.nightly.process import gc_paused
from core.nightly.progress import ProgressReporter
from core.nightly.scheduler import Scheduler
from core.nightly.store import ResultWriter, stored_lookup, writer_threaded

logger = logging.getLogger("fortuna.nightly")

NOTE_CATCH_UP = "catch-up: no successful run for {target_date} (missed night or a start after KST midnight)"
NOTE_INLINE = "local provider: generated inline on the main thread (no network, so no thread pool)"


def nightly_run_target(
    *, target: NightlyTarget, options: NightlyOptions, provider: Provider, stop: StopToken, deadline: float,
    notes: list[str] | None = None, executor: ExecutorFactory = executor_for,
    on_start: Callable[[NightlyRun], object] | None = None,
) -> NightlyRun:
    """One NightlyRun for one target date (given to on_start as soon as it exists). The caller holds the
    target's lock."""
    notes = list(notes or [])
    if target.catch_up:
        notes.append(NOTE_CATCH_UP.format(target_date=target.target_date))
        logger.warning("nightly run: %s; filling its gaps first", notes[-1])
    run = nightly_run_create(target=target, options=options, provider=provider, notes=notes)
    if on_start is not None:
        on_start(run)
    budget = options.max_cost if options.max_cost is not None else settings.FORTUNE_MAX_COST_PER_RUN
    guards = StopGuards(stop=stop, deadline=deadline, max_runtime_minutes=options.max_runtime_minutes,
                        budget=Decimal(budget or 0), workers=options.workers, model=provider.model)
    recorder = RunRecorder(run=run)
    try:
        _drive(run=run, target=target, options=options, provider=provider, guards=guards, recorder=recorder,
               executor=executor)
        recorder.finish(target=target, user_id=options.user_id, stop_reason=guards.reason,
                        interrupted=guards.interrupted)
    except BaseException as exc:
        if recorder.scheduler is not None:
            recorder.scheduler.abandon()
            recorder.scheduler.settle_writer()
        recorder.crash(exc)
        raise
    return run


def _drive(*, run: NightlyRun, target: NightlyTarget, options: NightlyOptions, provider: Provider,
           guards: StopGuards, recorder: RunRecorder, executor: ExecutorFactory) -> None:
    counts = nightly_plan_counts(target_date=target.target_date, user_id=options.user_id)
    run.eligible, run.already_present = counts.eligible, counts.already_present
    total = counts.eligible if options.force else counts.eligible - counts.already_present
    generations = writer = None
    try:
        generations = executor(provider=provider, options=options, guards=guards, run=run)
        logger.info(
            "nightly run %s (base %s%s): %d eligible, %d already present, %d to do; provider %s, %s",
            target.target_date, target.base_date, ", catch-up" if target.catch_up else "", counts.eligible,
            counts.already_present, total, provider.generator, _executor_label(generations, options),
        )
        if generations.inline:
            recorder.note(NOTE_INLINE)
        recorder.save()
        recorder.progress = ProgressReporter(
            total=total, stream=options.progress_stream, is_tty=options.progress_is_tty,
            interval=options.progress_interval, label=f"fortunes {target.target_date}",
        )
        writer = ResultWriter(for_date=target.target_date, provider=provider.name, model=provider.model,
                              replace=options.force, threaded=writer_threaded())
        plan = functools.partial(
            nightly_plan_pages, target_date=target.target_date, generator=provider.generator, force=options.force,
            nonce=f"force-run-{run.pk}" if options.force else "", user_id=options.user_id,
            page_size=options.page_size, language=settings.FORTUNE_LANGUAGE,
        )
        recorder.scheduler = Scheduler(
            pages=plan(), replan=lambda user_ids: plan(user_ids=user_ids), lookup=stored_lookup, guards=guards,
            executor=generations, writer=writer, max_in_flight=options.page_size,
            retry_cooldown=options.retry_cooldown, grace_seconds=options.grace_seconds, on_tick=recorder.tick,
            on_note=recorder.note,
        )
        with gc_paused():
            recorder.scheduler.run()
    finally:
        if generations is not None:
            generations.close()
        if writer is not None:
            writer.close()  # on a crash, still writes what was queued
        recorder.close_progress()


def _executor_label(executor, options: NightlyOptions) -> str:
    if executor.inline:
        return "inline"
    if executor.stores:
        return "celery workers"
    return f"{options.workers} workers"

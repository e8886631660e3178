"""A NightlyRun row's life: created when a target's run starts, its counters saved as a heartbeat
while it runs, finished with a status (or marked failed on a crash, or stale when its process died).

Every step here goes through the database retry policy (core.resilience.db_call): a database that
restarts mid-run costs a pause. Each heartbeat also verifies the night lock (core.nightly.lock): a run
that lost it to another stops with NightlyLockLost.
"""

import datetime as dt
import logging
import os
import socket
import time

from django.db.models import Exists, OuterRef
from django.utils import timezone

from core.fortunes.pricing import PATH_TIERS, PathUsage, cost_by_path, cost_paid, path_usage_from
from core.fortunes.providers import Provider
from core.models import CeleryChunk, FortuneResult, NightlyRun
from core.nightly.dates import NightlyTarget
from core.nightly.jobs import JobState, UserFailure
from core.nightly.lock import nightly_lock_verify
from core.nightly.options import NightlyOptions
from core.nightly.plan import nightly_eligible_users
from core.nightly.progress import ProgressReporter
from core.nightly.scheduler import Scheduler
from core.nightly.summary import nightly_run_summary
from core.resilience import db_call

logger = logging.getLogger("fortuna.nightly")

HEARTBEAT_SECONDS = 2.0  # a NightlyRun (and a working Celery chunk) beats at least this often: progress within 5 s
FAILURE_SAMPLE_SIZE = 20
STILL_MISSING = "{count} eligible users still have no fortune for {target_date}"
STALE = "stale: its process died without finishing (the lock was free)"
CRASHED = "crashed: {error}"
USER_DELETED = "the user was deleted (or is no longer eligible) before the fortune was stored: skipped"
INPUT_CHANGED = ("the user's birth data changed during the run, twice or after a stop: not stored from the old "
                 "data, left to the on-demand path")
_COUNTER_FIELDS = ["eligible", "already_present", "generated", "generations", "failed", "llm_requests",
                   "tokens_in", "tokens_out", "estimated_cost", "heartbeat_at", "failure_sample", "notes",
                   "cost_by_path", "in_flight"]


def nightly_runs_mark_stale(*, target_date: dt.date) -> int:
    """Mark `running` rows for target_date interrupted. Call only while holding its lock: then no
    live process can own them (a killed run never got to finish its row)."""
    return db_call(lambda: _runs_mark_stale(target_date=target_date), what="marking stale runs")


def _runs_mark_stale(*, target_date: dt.date) -> int:
    stale = NightlyRun.objects.filter(target_date=target_date, status=NightlyRun.Status.RUNNING)
    # A dead run's open Celery chunks: cancelled, so a worker that still gets one from the
    # queue skips it and one running it stops at its next heartbeat (this run plans those inputs again).
    CeleryChunk.objects.filter(run__in=stale, state__in=[CeleryChunk.State.QUEUED, CeleryChunk.State.RUNNING]).update(
        state=CeleryChunk.State.CANCELLED, finished_at=timezone.now())
    count = stale.update(status=NightlyRun.Status.INTERRUPTED, finished_at=timezone.now(), stop_reason=STALE)
    if count:
        logger.warning("nightly run: marked %d stale running run(s) for %s interrupted", count, target_date)
    return count


def nightly_run_create(
    *, target: NightlyTarget, options: NightlyOptions, provider: Provider, notes: list[str],
) -> NightlyRun:
    run = NightlyRun(
        base_date=target.base_date, target_date=target.target_date, catch_up=target.catch_up,
        forced=options.force, user_id_filter=options.user_id, workers=options.workers,
        provider=provider.name, model=provider.model, pid=os.getpid(), hostname=socket.gethostname()[:255],
        notes="\n".join(notes),
    )

    def create() -> None:
        run.pk = None  # an attempt whose commit was lost is simply made again
        run.save(force_insert=True)

    db_call(create, what="creating the run's NightlyRun row")
    return run


def nightly_run_status(*, failed: int, stored: int, stop_reason: str, interrupted: bool, missing: int) -> str:
    if interrupted:
        return NightlyRun.Status.INTERRUPTED
    if not failed and not stop_reason and not missing:
        return NightlyRun.Status.SUCCEEDED
    if stored == 0 and (failed or stop_reason):
        return NightlyRun.Status.FAILED
    return NightlyRun.Status.PARTIAL


def failure_entry(*, error, digest: str, user_ids: list[int]) -> dict:
    """One failed input in a run's failure sample (the threads backend's jobs, the celery chunks)."""
    return {"reason": error.reason if error else "unknown", "error": str(error)[:200], "input": digest[:16],
            "count": len(user_ids), "user_ids": user_ids[:5]}


def unplannable_entry(user_ids: list[int]) -> dict:
    """The users whose natal pillars could not be computed, as one failure-sample entry."""
    return {"reason": UserFailure.INVALID_BIRTH_DATA, "error": "natal pillars could not be computed", "input": "",
            "count": len(user_ids), "user_ids": user_ids[:5]}


def failure_sample(*, scheduler: Scheduler, limit: int = FAILURE_SAMPLE_SIZE) -> list[dict]:
    """Up to limit failed inputs (reason, error, users), then the users without natal pillars."""
    sample = []
    for job in scheduler.table:
        if len(sample) >= limit:
            break
        if job.state is JobState.FAILED:
            sample.append(failure_entry(error=job.error, digest=job.hash, user_ids=job.user_ids))
    tally = scheduler.tally
    if tally.unplannable and len(sample) < limit:
        sample.append(unplannable_entry(tally.unplannable))
    for reason, error, user_ids in ((UserFailure.USER_DELETED, USER_DELETED, tally.gone),
                                    (UserFailure.INPUT_CHANGED, INPUT_CHANGED, tally.changed)):
        if user_ids and len(sample) < limit:
            sample.append({"reason": reason, "error": error, "input": "", "count": len(user_ids),
                           "user_ids": user_ids[:5]})
    return sample


def run_cost_paths_set(*, run: NightlyRun, usage: dict[str, PathUsage]) -> None:
    """Set run.cost_by_path (and estimated_cost, what the run's own paths cost) from some paths' usage;
    the paths not given keep what the run has (e.g. the synchronous ones when the Batch API's is added)."""
    merged = {path: path_usage_from(cost_by_path=run.cost_by_path or {}, path=path) for path in PATH_TIERS}
    merged.update(usage)
    run.cost_by_path = cost_by_path(model=run.model, usage=merged)
    run.estimated_cost = cost_paid(model=run.model, usage=merged)


def nightly_run_outcome(
    *, target: NightlyTarget, user_id: int | None, failed: int, stored: int, stop_reason: str, interrupted: bool,
) -> tuple[str, str]:
    """(status, stop_reason) of a finished run, whichever backend made its generations: users still
    without a fortune, when nothing failed or stopped, are the stop reason (STILL_MISSING)."""
    missing = db_call(
        lambda: nightly_eligible_users(user_id=user_id)
        .filter(~Exists(FortuneResult.objects.filter(user=OuterRef("pk"), for_date=target.target_date)))
        .count(),
        what="counting the users still without a fortune",
    )
    status = nightly_run_status(failed=failed, stored=stored, stop_reason=stop_reason, interrupted=interrupted,
                              missing=missing)
    if not stop_reason and missing and not failed:
        stop_reason = STILL_MISSING.format(count=missing, target_date=target.target_date)
    return status, stop_reason[:255]


class RunRecorder:
    """Keeps one NightlyRun (and the progress display) in step with its scheduler."""

    def __init__(self, *, run: NightlyRun, progress: ProgressReporter | None = None) -> None:
        self.run = run
        self.progress = progress
        self.scheduler: Scheduler | None = None
        self.last_heartbeat = 0.0

    def note(self, text: str) -> None:
        self.run.notes = f"{self.run.notes}\n{text}".strip()

    def tick(self, force: bool = False) -> None:
        if force or time.monotonic() - self.last_heartbeat >= HEARTBEAT_SECONDS:
            nightly_lock_verify(target_date=self.run.target_date)
            self.save()
        if self.progress is not None and self.scheduler is not None:
            self.progress.update(done=self.scheduler.tally.stored_users, failed=self.scheduler.failed_users)

    def save(self, *, final: bool = False) -> None:
        run, scheduler = self.run, self.scheduler
        if scheduler is not None:
            tally = scheduler.tally
            run.generated, run.generations, run.failed = tally.stored_users, tally.generations, scheduler.failed_users
            run.llm_requests, run.tokens_in, run.tokens_out = tally.requests, tally.tokens_in, tally.tokens_out
            run_cost_paths_set(run=run, usage=tally.paths)
            run.failure_sample = failure_sample(scheduler=scheduler)
            run.in_flight = scheduler.table.queued  # submitted to the backend, no answer yet
        if final:
            run.in_flight = 0
        fields = _COUNTER_FIELDS + (["status", "stop_reason", "finished_at"] if final else [])

        def save() -> None:
            run.heartbeat_at = timezone.now()
            run.save(update_fields=fields)

        db_call(save, what="saving the run's progress" if not final else "finishing the run's NightlyRun row")
        self.last_heartbeat = time.monotonic()

    def close_progress(self) -> None:
        if self.progress is not None:
            if self.scheduler is not None:
                self.progress.update(done=self.scheduler.tally.stored_users, failed=self.scheduler.failed_users)
            self.progress.close()

    def finish(self, *, target: NightlyTarget, user_id: int | None, stop_reason: str, interrupted: bool) -> None:
        run, scheduler = self.run, self.scheduler
        run.status, run.stop_reason = nightly_run_outcome(
            target=target, user_id=user_id, failed=scheduler.failed_users, stored=scheduler.tally.stored_users,
            stop_reason=stop_reason, interrupted=interrupted)
        run.finished_at = timezone.now()
        self.save(final=True)
        logger.info("nightly run %s finished: %s", target.target_date, nightly_run_summary(run=run))

    def crash(self, exc: BaseException) -> None:
        """Mark the run failed; never raises (the crash's own error is the caller's to raise): with the
        database gone past the retry window the row stays `running`, and the next run marks it stale."""
        run = self.run
        run.status = NightlyRun.Status.FAILED
        run.stop_reason = CRASHED.format(error=f"{type(exc).__name__}: {exc}")[:255]
        run.finished_at = timezone.now()
        logger.error("nightly run %s: %s", run.target_date, run.stop_reason, exc_info=exc)
        try:
            self.save(final=True)
        except Exception:
            logger.exception("nightly run %s: could not mark the run failed; the next run marks it stale",
                             run.target_date)

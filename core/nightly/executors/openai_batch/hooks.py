"""The OpenAI Batch API inside the nightly run (the rest of this package does the remote work).

The night of base date B, with day-ahead submission on (or batches for B+1 still open):
1. before B+1's synchronous pass, settle B+1's batches (collect; cancel the open ones, wait
   FORTUNE_BATCH_CANCEL_WAIT_SECONDS, collect their partial output);
2. the synchronous pass fills whatever is still missing (flex when configured);
3. after it (unless the night was stopped), submit B+2.
The Batch API's usage joins the run's synchronous paths in NightlyRun.cost_by_path. An API error is
recorded in the run's notes and printed; it never fails the night (the synchronous pass covers it).
"""

import datetime as dt
import logging

import openai

from core.fortunes.providers import Provider, ProviderError
from core.models import NightlyRun, OpenAIBatch
from core.nightly.dates import NightlyTarget
from core.nightly.executors.openai_batch.cancel import openai_batch_settle
from core.nightly.executors.openai_batch.client import openai_batch_client, openai_batch_open_dates
from core.nightly.executors.openai_batch.collect import openai_batch_collect
from core.nightly.executors.openai_batch.reports import (
    CollectReport,
    openai_batch_collect_summary,
    openai_batch_submit_summary,
)
from core.nightly.executors.openai_batch.submit import openai_batch_submit_ahead
from core.nightly.guards import StopToken
from core.nightly.hooks import NightHooks
from core.nightly.lifecycle import run_cost_paths_set
from core.nightly.lock import NightlyLocked, nightly_lock
from core.nightly.options import NightlyOptions

logger = logging.getLogger("fortuna.nightly.openai_batch")

SETTLE_FAILED = "batch api: settling {target_date} failed ({error}); its inputs go synchronous"
SUBMIT_FAILED = "batch api: submitting {target_date} failed ({error}); it goes synchronous on its night"
SUBMIT_SKIPPED_STOPPED = "batch api: {target_date} not submitted: the night was stopped ({reason})"
COLLECT_SKIPPED_LOCKED = "batch api collect {target_date}: skipped, a nightly run holds its lock"
COLLECT_NOTHING_OPEN = "batch api collect: no open batches"


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


class OpenAIBatchHooks(NightHooks):
    """The nightly service's Batch API steps around each target (selected by night_hooks())."""

    def __init__(self, *, options: NightlyOptions, stop: StopToken) -> None:
        self.options = options
        self.stop = stop
        self.lines: list[str] = []
        self.settled: dict[dt.date, CollectReport] = {}

    def report_lines(self) -> list[str]:
        return list(self.lines)

    def _say(self, text: str, *, warning: bool = False) -> None:
        self.lines.append(text)
        (logger.warning if warning else logger.info)("%s", text)

    def before_target(self, *, target: NightlyTarget, provider: Provider) -> None:
        if provider.name != "openai":
            return
        if not self.options.ahead and not OpenAIBatch.objects.filter(
            target_date=target.target_date, state__in=OpenAIBatch.OPEN_STATES
        ).exists():
            return
        try:
            if self.options.user_id is not None:
                # One user's run (an operator's fix during the day): collect what is done, but never
                # cancel the whole date's batches for it; the nightly run settles them.
                collected = openai_batch_collect(target_date=target.target_date, base_date=target.base_date)
            else:
                collected = openai_batch_settle(target_date=target.target_date, base_date=target.base_date,
                                             wait_seconds=self.options.cancel_wait_seconds,
                                             stop=self.stop.event).collect
        except (openai.APIError, ProviderError) as exc:
            self._say(SETTLE_FAILED.format(target_date=target.target_date, error=_error(exc)), warning=True)
            return
        self.settled[target.target_date] = collected
        self._say(openai_batch_collect_summary(report=collected))

    def after_target(self, *, target: NightlyTarget, provider: Provider, run: NightlyRun) -> None:
        collected = self.settled.get(target.target_date)
        notes = []
        if collected is not None:
            run_cost_paths_set(run=run, usage={"batch_api": collected.usage()})
            notes.append(openai_batch_collect_summary(report=collected))
        if self.options.ahead and not target.catch_up and provider.name == "openai":
            notes.append(self._submit_ahead(target=target))
        if notes:
            run.notes = "\n".join([run.notes, *notes]).strip()
            run.save(update_fields=["cost_by_path", "estimated_cost", "notes"])

    def _submit_ahead(self, *, target: NightlyTarget) -> str:
        ahead = target.target_date + dt.timedelta(days=1)
        if self.stop.is_set:
            text = SUBMIT_SKIPPED_STOPPED.format(target_date=ahead, reason=self.stop.reason)
            self._say(text, warning=True)
            return text
        try:
            report = openai_batch_submit_ahead(target_date=ahead, base_date=target.base_date,
                                            user_id=self.options.user_id)
        except (openai.APIError, ProviderError) as exc:
            text = SUBMIT_FAILED.format(target_date=ahead, error=_error(exc))
            self._say(text, warning=True)
            return text
        text = openai_batch_submit_summary(report=report)
        self._say(text, warning=bool(report.error))
        return text


def night_hooks(*, options: NightlyOptions, stop: StopToken) -> NightHooks:
    """The hooks a night runs with by default: the Batch API steps (they do nothing unless the
    provider is OpenAI and day-ahead is on or the target date has open batches)."""
    return OpenAIBatchHooks(options=options, stop=stop)


def openai_batch_ahead_check(*, options: NightlyOptions) -> None:
    """Day-ahead asked for with a provider that cannot do it: raise ProviderConfigError before anything."""
    if options.ahead:
        openai_batch_client()  # the shared client (core.fortunes.providers.openai): raises, never closed here


def openai_batch_ahead_plan(*, base_date: dt.date, user_id: int | None = None) -> str:
    """--dry-run: what tonight would submit for base+2, and what it would cost each way."""
    report = openai_batch_submit_ahead(target_date=base_date + dt.timedelta(days=2), base_date=base_date,
                                    dry_run=True, user_id=user_id)
    return openai_batch_submit_summary(report=report)


def openai_batch_collect_due() -> list[str]:
    """--collect-batches: collect every target date's open batches under its lock (a date whose lock
    a run holds is skipped: that run collects it). One summary line per date."""
    lines = []
    for target_date in openai_batch_open_dates():
        try:
            with nightly_lock(target_date=target_date):
                report = openai_batch_collect(target_date=target_date)
        except NightlyLocked:
            lines.append(COLLECT_SKIPPED_LOCKED.format(target_date=target_date))
            continue
        lines.append(f"{target_date}: {openai_batch_collect_summary(report=report)}")
    return lines or [COLLECT_NOTHING_OPEN]

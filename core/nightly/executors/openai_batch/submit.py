"""Submission a day ahead: the engine (core.nightly.scheduler.Scheduler) plans the target date's
pages, dedupes inputs across pages and skips those stored already; the submit executor writes each
input left into the current JSONL file, uploading it and creating its batch when it is full."""

import datetime as dt
import logging

import openai
from django.conf import settings

from core.fortunes.inputs import GenerationInput
from core.fortunes.pricing import Tier
from core.fortunes.prompt import build_messages, estimate_tokens
from core.fortunes.providers.openai import chat_completion_body
from core.models import OpenAIBatch
from core.nightly.executors.openai_batch.client import (
    MAX_BYTES_PER_FILE,
    MAX_REQUESTS_PER_FILE,
    cost,
    openai_batch_client,
)
from core.nightly.executors.openai_batch.engine import BatchGuards, NoWriter
from core.nightly.executors.openai_batch.files import JsonlFile, batch_line
from core.nightly.executors.openai_batch.reports import SubmitReport
from core.nightly.executors.openai_batch.resume import openai_batch_resume
from core.nightly.executors.openai_batch.rows import SubmitStopped, file_submit
from core.nightly.guards import StopToken
from core.nightly.outcomes import Deferred, Outcome
from core.nightly.plan import PAGE_SIZE, nightly_plan_pages
from core.nightly.process import gc_paused
from core.nightly.scheduler import Scheduler
from core.nightly.store import stored_lookup

logger = logging.getLogger("fortuna.nightly.openai_batch")


class SubmitExecutor:
    """Inline: submit() writes the input's line (or, in a dry run, only counts it) and answers
    Deferred(); an input in an open batch already answers Deferred(submitted=False), with no line."""

    inline = True
    stores = False

    def __init__(self, *, client: openai.OpenAI | None, report: SubmitReport, in_flight: set[str], stop: StopToken,
                 max_requests: int, max_bytes: int) -> None:
        self.client, self.report, self.in_flight, self.stop = client, report, in_flight, stop
        self.limits = dict(max_requests=max_requests, max_bytes=max_bytes)
        self.current = JsonlFile() if client is not None else None
        self.sizes = (0, 0)  # requests, bytes of the file a dry run would be writing

    def submit(self, digest: str, inp: GenerationInput, user_ids: list[int]) -> Deferred:
        if digest in self.in_flight:
            return Deferred(submitted=False)
        report = self.report
        line = batch_line(digest=digest, body=chat_completion_body(model=report.model, messages=build_messages(inp)))
        tokens_in, tokens_out = estimate_tokens(inp)
        report.tokens_in += tokens_in
        report.tokens_out += tokens_out
        report.requests += 1
        if self.current is None:  # dry run: only count what the files would hold
            count, size = self.sizes
            if count >= self.limits["max_requests"] or size + len(line) > self.limits["max_bytes"]:
                report.files.append(self.sizes)
                count, size = 0, 0
            self.sizes = (count + 1, size + len(line))
            return Deferred()
        if self.current.hashes and not self.current.fits(len(line), **self.limits):
            self._send()
        if not self.stop.is_set:
            self.current.add(digest, line)
        return Deferred()

    def _send(self) -> None:
        """Upload the current file and create its batch; a failure stops the submission."""
        jsonl, self.current = self.current, JsonlFile()
        report = self.report
        report.files.append((len(jsonl.hashes), jsonl.bytes))
        try:
            file_submit(client=self.client, jsonl=jsonl, target_date=report.target_date, model=report.model)
            report.batches_created += 1
        except SubmitStopped as exc:
            report.error = str(exc)
            self.stop.request(report.error)  # the engine takes no further page or input
        finally:
            jsonl.fh.close()

    def finish(self) -> None:
        """The last file: sent (or, in a dry run, counted) unless the submission was stopped."""
        if self.current is None:
            if self.sizes[0]:
                self.report.files.append(self.sizes)
        elif self.current.hashes and not self.stop.is_set:
            self._send()

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        return []

    def close(self) -> None:
        if self.current is not None:
            self.current.fh.close()


def openai_batch_submit_ahead(
    *,
    target_date: dt.date,
    base_date: dt.date | None = None,
    dry_run: bool = False,
    user_id: int | None = None,
    max_requests: int = MAX_REQUESTS_PER_FILE,
    max_bytes: int = MAX_BYTES_PER_FILE,
    page_size: int = PAGE_SIZE,
) -> SubmitReport:
    """Plan target_date for every eligible user and submit the inputs not stored yet as batches.

    Inputs already stored, or already in an open batch for target_date, are not sent again. dry_run
    writes nothing and calls nothing: the report says what would be submitted and what it would
    cost on the Batch API and on the standard tier. An API error stops the submission (recorded on
    the row and in report.error); what was not submitted goes synchronous on its night.
    """
    model = settings.OPENAI_MODEL
    report = SubmitReport(target_date=target_date, dry_run=dry_run, model=model)
    client = None
    if not dry_run:
        client = openai_batch_client()
        openai_batch_resume(target_date=target_date, base_date=base_date)
    stop = StopToken()
    executor = SubmitExecutor(client=client, report=report, in_flight=_in_flight(target_date=target_date), stop=stop,
                              max_requests=max_requests, max_bytes=max_bytes)
    pages = nightly_plan_pages(target_date=target_date, generator=f"openai:{model}", user_id=user_id,
                               page_size=page_size, compute_stale_natal=dry_run, language=settings.FORTUNE_LANGUAGE)
    engine = Scheduler(pages=pages, lookup=stored_lookup, guards=BatchGuards(stop=stop), executor=executor,
                       writer=NoWriter())
    try:
        with gc_paused():  # as in the nightly run: the job table is freed by reference counting
            tally = engine.run()
        executor.finish()
    finally:
        executor.close()
    report.users = tally.deferred_users - tally.deferred_unsent_users
    report.already_submitted = tally.deferred_unsent_users
    report.already_stored = tally.reused_users
    report.cost_batch = cost(model, Tier.BATCH, report.tokens_in, report.tokens_out)
    report.cost_standard = cost(model, Tier.STANDARD, report.tokens_in, report.tokens_out)
    logger.info("batch api submit %s%s: %d users, %d requests in %d file(s), %d batch(es) created; "
                "~$%s (standard ~$%s)%s", target_date, " (dry run)" if dry_run else "", report.users,
                report.requests, len(report.files), report.batches_created, report.cost_batch, report.cost_standard,
                f"; stopped: {report.error}" if report.error else "")
    return report


def _in_flight(*, target_date: dt.date) -> set[str]:
    """The inputs in target_date's open batches: not sent again."""
    hashes: set[str] = set()
    for row_hashes in OpenAIBatch.objects.filter(
        target_date=target_date, state__in=OpenAIBatch.OPEN_STATES
    ).values_list("input_hashes", flat=True):
        hashes.update(row_hashes)
    return hashes

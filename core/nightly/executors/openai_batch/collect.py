"""Collection: poll the submitted batches, download and parse what the done ones answered, and store
it through the engine (core.nightly.scheduler.Scheduler) with the collected-lines executor.

The engine is fed the target date's plan, as it is *now*, filtered to the inputs that have a line:
so every eligible user gets the line of the input they have now (a user who changed birth data
after submission gets nothing from the old input), a generation stored by another path is kept
(the engine's lookup), later pages' users of an input join it, and the engine's writer stores
generations once per input hash and result rows ON CONFLICT DO NOTHING (idempotent). Lines that
failed stay missing for the synchronous pass.
"""

import datetime as dt
import logging
import time

import openai
from django.conf import settings
from django.utils import timezone

from core.fortunes.inputs import GenerationInput
from core.fortunes.pricing import Tier
from core.fortunes.providers import Generated, ProviderError
from core.fortunes.providers.openai import completion_part
from core.models import OpenAIBatch
from core.nightly.executors.openai_batch.client import REMOTE_DONE, cost, error_text, openai_batch_client
from core.nightly.executors.openai_batch.engine import BatchGuards
from core.nightly.executors.openai_batch.files import LINE_INVALID, LINE_OK, Line, Parsed, RowCounts, output_parse
from core.nightly.executors.openai_batch.reports import CollectReport
from core.nightly.executors.openai_batch.resume import openai_batch_resume
from core.nightly.outcomes import Outcome
from core.nightly.plan import PAGE_SIZE, PlanPage, nightly_plan_pages
from core.nightly.process import gc_paused
from core.nightly.scheduler import Scheduler
from core.nightly.store import ResultWriter, stored_lookup, writer_threaded
from core.resilience import Attempted

logger = logging.getLogger("fortuna.nightly.openai_batch")

# Output lines held in memory per storing pass (each pass re-plans the target date once).
COLLECT_LINES_PER_PASS = 50_000
REMOTE_FAILED = "the batch failed: {errors}"


class CollectedLinesExecutor:
    """Inline: an input's generation is its line's answer, validated as a synchronous answer is; an
    invalid one is a failed Attempted (FailureReason.INVALID_OUTPUT, from completion_part)."""

    inline = True
    stores = False

    def __init__(self, *, lines: dict[str, Line]) -> None:
        self.lines = lines

    def submit(self, digest: str, inp: GenerationInput, user_ids: list[int]) -> Attempted:
        line = self.lines[digest]
        content, line.content = line.content, ""  # held until stored by the engine's job, not twice
        try:
            part = completion_part(finish_reason="stop", refusal=None, content=content)
        except ProviderError as exc:
            line.outcome = LINE_INVALID
            return Attempted(generated=None, error=exc, attempts=0)
        line.outcome = LINE_OK
        return Attempted(generated=Generated(content=inp.compose(part), tokens_in=line.tokens_in,
                                             tokens_out=line.tokens_out, service_tier="batch"),
                         error=None, attempts=0)

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        return []

    def close(self) -> None:
        pass


def openai_batch_collect(
    *, target_date: dt.date | None = None, base_date: dt.date | None = None, page_size: int = PAGE_SIZE,
) -> CollectReport:
    """Poll the submitted batches (of target_date, or all: then the caller must hold every open date's
    lock) and store those that are done.

    A completed, expired or cancelled batch has its output and error files downloaded and stored;
    a download that fails leaves the batch to the next poll. A failed batch is settled as failed.
    """
    started = time.monotonic()
    report = CollectReport()
    client = openai_batch_client()
    openai_batch_resume(target_date=target_date, base_date=base_date)
    rows = OpenAIBatch.objects.filter(state=OpenAIBatch.State.SUBMITTED).order_by("pk")
    if target_date is not None:
        rows = rows.filter(target_date=target_date)
    groups: dict[tuple[dt.date, str], list[OpenAIBatch]] = {}
    for row in rows:
        if _poll(client, row, report):
            groups.setdefault((row.target_date, row.model), []).append(row)
    for (day, model), group in groups.items():
        chunk: list[OpenAIBatch] = []
        for row in group:
            if chunk and sum(r.request_count for r in chunk) + row.request_count > COLLECT_LINES_PER_PASS:
                _collect_pass(client=client, rows=chunk, target_date=day, model=model, report=report,
                              page_size=page_size)
                chunk = []
            chunk.append(row)
        _collect_pass(client=client, rows=chunk, target_date=day, model=model, report=report, page_size=page_size)
    report.seconds = time.monotonic() - started
    logger.info("batch api collect: %d polled, %d collected, %d open, %d failed; %d users stored, lines %d ok / "
                "%d failed / %d orphaned / %d unmatched; %d download failures", report.polled, report.collected,
                report.still_open, report.failed_batches, report.stored_users, report.lines_ok, report.lines_failed,
                report.lines_orphaned, report.lines_unmatched, report.download_failures)
    return report


def _poll(client: openai.OpenAI, row: OpenAIBatch, report: CollectReport) -> bool:
    """Record the batch's status; True if it is done and its files are to be stored."""
    report.polled += 1
    try:
        batch = client.batches.retrieve(row.batch_id)
    except openai.APIError as exc:
        row.last_error = error_text("batch retrieve", exc)
        row.save(update_fields=["last_error"])
        report.still_open += 1
        return False
    row.remote_status = batch.status
    row.output_file_id, row.error_file_id = batch.output_file_id or "", batch.error_file_id or ""
    row.save(update_fields=["remote_status", "output_file_id", "error_file_id"])
    if batch.status == "failed":
        errors = "; ".join(f"{e.code}: {e.message}" for e in (batch.errors.data or [])) if batch.errors else ""
        row.state, row.last_error = OpenAIBatch.State.FAILED, REMOTE_FAILED.format(errors=errors)[:500]
        row.failed_lines, row.collected_at = row.request_count, timezone.now()
        row.save(update_fields=["state", "last_error", "failed_lines", "collected_at"])
        report.failed_batches += 1
        return False
    if batch.status in REMOTE_DONE:
        return True
    report.still_open += 1
    return False


def _download(client: openai.OpenAI, file_id: str) -> str:
    return client.files.content(file_id).text if file_id else ""


def _collect_pass(
    *, client: openai.OpenAI, rows: list[OpenAIBatch], target_date: dt.date, model: str, report: CollectReport,
    page_size: int,
) -> None:
    """Download the rows' files (a failed download leaves that row to the next poll), store the lines
    of those downloaded, and record each row's counts."""
    parsed = Parsed(lines={})
    counts: dict[int, RowCounts] = {}
    downloaded: list[OpenAIBatch] = []
    for row in rows:
        try:
            output, errors = _download(client, row.output_file_id), _download(client, row.error_file_id)
        except openai.APIError as exc:
            row.download_failures += 1
            row.last_error = error_text("download", exc)
            row.save(update_fields=["download_failures", "last_error"])
            report.download_failures += 1
            report.still_open += 1
            continue
        counts[row.pk] = RowCounts()
        output_parse(output, row=row, counts=counts[row.pk], parsed=parsed)
        output_parse(errors, row=row, counts=counts[row.pk], parsed=parsed)
        downloaded.append(row)
    if not downloaded:
        return
    report.lines_unmatched += parsed.unmatched
    # As in the nightly run: the cyclic GC would rescan the lines' objects over and over; they are
    # freed by reference counting.
    with gc_paused():
        _lines_store(lines=parsed.lines, target_date=target_date, model=model, report=report, page_size=page_size)
    for line in parsed.lines.values():
        row_counts = counts[line.row.pk]
        if line.outcome == LINE_OK:
            row_counts.completed_lines += 1
            row_counts.stored_users += line.users
        elif line.outcome == LINE_INVALID:
            row_counts.failed_lines += 1
        else:
            report.lines_orphaned += 1
    for row in downloaded:
        _row_collected(row, counts[row.pk], model=model, report=report)
    # The pass's cost from its totals (each row's own estimate is on the row).
    tokens_in, tokens_out = sum(c.tokens_in for c in counts.values()), sum(c.tokens_out for c in counts.values())
    report.cost_batch += cost(model, Tier.BATCH, tokens_in, tokens_out)
    report.cost_standard += cost(model, Tier.STANDARD, tokens_in, tokens_out)


def _row_collected(row: OpenAIBatch, counts: RowCounts, *, model: str, report: CollectReport) -> None:
    row.completed_lines, row.failed_lines, row.stored_users = (counts.completed_lines, counts.failed_lines,
                                                               counts.stored_users)
    row.tokens_in, row.tokens_out = counts.tokens_in, counts.tokens_out
    row.estimated_cost = cost(model, Tier.BATCH, counts.tokens_in, counts.tokens_out)
    row.state, row.collected_at, row.last_error = OpenAIBatch.State.COLLECTED, timezone.now(), ""
    row.save(update_fields=["completed_lines", "failed_lines", "stored_users", "tokens_in", "tokens_out",
                            "estimated_cost", "state", "collected_at", "last_error"])
    report.collected += 1
    report.lines_ok += counts.completed_lines
    report.lines_failed += counts.failed_lines
    report.tokens_in += counts.tokens_in
    report.tokens_out += counts.tokens_out


def _lines_store(*, lines: dict[str, Line], target_date: dt.date, model: str, report: CollectReport,
                 page_size: int) -> None:
    """Store the lines' fortunes for every eligible user whose current input is one of them: the
    engine over the plan's pages, one flush per page (what a crash loses is the page in hand)."""

    def lookup(hashes) -> dict[str, int]:
        found = stored_lookup(hashes)
        for digest in found:  # stored by another path (or by this pass, for a later page): keep that one
            if not lines[digest].outcome:
                lines[digest].outcome, lines[digest].content = LINE_OK, ""
        return found

    writer = ResultWriter(for_date=target_date, provider="openai", model=model, replace=False,
                          threaded=writer_threaded())
    engine = Scheduler(pages=(), lookup=lookup, guards=BatchGuards(), executor=CollectedLinesExecutor(lines=lines),
                       writer=writer)
    try:
        for page in nightly_plan_pages(target_date=target_date, generator=f"openai:{model}", page_size=page_size,
                                       language=settings.FORTUNE_LANGUAGE):
            matched = _page_matched(page, lines)
            if matched is not None:
                engine.take_page(matched)
                engine.tick(force=True)
        engine.flush_all()
    finally:
        writer.close()
    report.stored_users += engine.tally.stored_users
    report.stored_generations += engine.tally.generations


def _page_matched(page: PlanPage, lines: dict[str, Line]) -> PlanPage | None:
    """The page's users whose input has a line (counted on the line), or None if none has."""
    groups = {digest: group for digest, group in page.groups.items() if digest in lines}
    if not groups:
        return None
    for digest, group in groups.items():
        lines[digest].users += len(group.user_ids)
    return PlanPage(groups=groups, users=sum(len(g.user_ids) for g in groups.values()),
                    already_present=page.already_present, unplannable=[])

"""Day-ahead generation through the OpenAI Batch API: submit a target date's inputs a day early,
collect what the batches answered, cancel what is still open before the synchronous pass.

Every remote step is recorded in an OpenAIBatch row before the next one starts (planned → uploaded →
submitted → collected | failed | discarded), so a process killed anywhere is resumed by
openai_batch_resume() on the next call: a batch is found again by its metadata key before anything is
created, and an uploaded file without a batch is submitted (still a day ahead) or deleted.

Storing is idempotent (core.nightly.store: generations by input hash, results ON CONFLICT DO NOTHING),
and it re-plans the target date, so every eligible user gets the line of the input they have *now*
(a user who changed birth data after submission gets nothing from the old input) and a generation
stored by another path is kept. Lines that failed stay missing for the synchronous pass.

Callers hold nightly_lock(target_date) for every target date they touch (openai_batch_open_dates()), and
every step acts only on the rows of the date it was given, so the nightly run and `--collect-batches`
never act on the same rows at once. The date lock, not row locks (select_for_update), because a row
is committed *before* its upload (that is what makes a killed submission resumable), so a row lock
could only be taken after that commit, leaving a window; it would also hold a transaction open
across an upload of up to 200 MB, and SQLite has none. The date lock is held by the night for its
whole length on both databases already.
"""

import datetime as dt
import gc
import hashlib
import json
import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO

import openai
from django.conf import settings
from django.utils import timezone

from core.fortunes.pricing import PathUsage, Tier, cost_estimate
from core.fortunes.prompt import build_messages, estimate_tokens
from core.fortunes.providers import Generated, ProviderConfigError, ProviderError
from core.fortunes.providers.openai import (
    OPENAI_KEY_MISSING,
    OPENAI_MODEL_MISSING,
    chat_completion_body,
    completion_part,
    openai_client_get,
)
from core.models import OpenAIBatch
from core.nightly.dates import nightly_today
from core.nightly.plan import PAGE_SIZE, nightly_plan_pages
from core.nightly.store import Flush, GeneratedItem, ResultWriter, generation_ids_by_hash, writer_threaded

logger = logging.getLogger("fortuna.nightly.openai_batch")

ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# The Batch API's limits per input file; one model per file (every line of one call has the same).
MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200_000_000
METADATA_KEY = "fortuna_key"
FILENAME = "fortuna-{key}.jsonl"
HTTP_TIMEOUT = 300.0  # an upload or download of up to 200 MB
# Output lines held in memory per storing pass (each pass re-plans the target date once).
COLLECT_LINES_PER_PASS = 50_000
LIST_MARGIN = dt.timedelta(hours=1)  # clock skew between our created_at and the batch's
REMOTE_OPEN = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
REMOTE_DONE = frozenset({"completed", "expired", "cancelled"})
RESUBMIT_MIN_DAYS_AHEAD = 2  # an uploaded file is still worth a batch only this many days ahead

BATCH_API_NEEDS_OPENAI = "The Batch API needs FORTUNE_PROVIDER=openai; it is {provider!r}."
DISCARDED_UNCONFIRMED = "upload never confirmed and no such file on the server: its inputs go synchronous"
DISCARDED_TOO_LATE = "uploaded but not submitted before {target_date} was due: file deleted, inputs go synchronous"
REMOTE_FAILED = "the batch failed: {errors}"
REMOTE_CALL_FAILED = "{step} failed: {error}"


@dataclass
class SubmitReport:
    target_date: dt.date
    dry_run: bool = False
    users: int = 0  # users whose input goes into a batch
    requests: int = 0  # lines = distinct inputs
    already_stored: int = 0  # users whose input already has a stored generation
    already_submitted: int = 0  # users whose input is in an open batch already
    files: list[tuple[int, int]] = field(default_factory=list)  # (requests, bytes) per file
    batches_created: int = 0
    tokens_in: int = 0  # estimates (core.fortunes.prompt.estimate_tokens)
    tokens_out: int = 0
    cost_batch: Decimal = Decimal(0)
    cost_standard: Decimal = Decimal(0)
    model: str = ""
    error: str = ""  # the API error that stopped the submission, if one did


@dataclass
class CollectReport:
    polled: int = 0
    collected: int = 0  # batches whose files were stored this call
    still_open: int = 0
    failed_batches: int = 0
    download_failures: int = 0
    lines_ok: int = 0  # valid lines whose generation is stored (or was already)
    lines_failed: int = 0  # lines left for the synchronous pass
    lines_orphaned: int = 0  # lines no current user needs any more (changed input, already served)
    lines_unmatched: int = 0  # damaged lines naming no custom_id: skipped, their inputs go synchronous
    stored_users: int = 0
    stored_generations: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_batch: Decimal = Decimal(0)
    cost_standard: Decimal = Decimal(0)
    seconds: float = 0.0

    def usage(self) -> PathUsage:
        """The "batch_api" entry of NightlyRun.cost_by_path (core.fortunes.pricing.cost_by_path)."""
        return PathUsage(requests=self.lines_ok + self.lines_failed + self.lines_orphaned + self.lines_unmatched,
                         tokens_in=self.tokens_in, tokens_out=self.tokens_out)


@dataclass
class CancelReport:
    cancel_requested: int = 0
    still_open: int = 0  # not terminal when the wait ended
    collect: CollectReport = field(default_factory=CollectReport)


@dataclass
class ResumeReport:
    adopted: int = 0  # batches found by their metadata key
    created: int = 0
    discarded: int = 0
    error: str = ""  # listing failed: nothing was resumed this time


def openai_batch_client() -> openai.OpenAI:
    """The SDK client of the Batch API calls (no SDK retries: a failed call is retried on the next poll)."""
    if settings.FORTUNE_PROVIDER != "openai":
        raise ProviderConfigError(BATCH_API_NEEDS_OPENAI.format(provider=settings.FORTUNE_PROVIDER))
    if not settings.OPENAI_API_KEY:
        raise ProviderConfigError(OPENAI_KEY_MISSING)
    if not settings.OPENAI_MODEL:
        raise ProviderConfigError(OPENAI_MODEL_MISSING)
    return openai_client_get(base_url=settings.OPENAI_BASE_URL or None, api_key=settings.OPENAI_API_KEY,
                             timeout=HTTP_TIMEOUT)


def openai_batch_open_dates() -> list[dt.date]:
    """Target dates with batches not yet collected: the dates a collecting caller must lock."""
    return sorted(set(OpenAIBatch.objects.filter(state__in=OpenAIBatch.OPEN_STATES)
                      .values_list("target_date", flat=True)))


def _error_text(step: str, exc: Exception) -> str:
    return REMOTE_CALL_FAILED.format(step=step, error=f"{type(exc).__name__}: {exc}")[:500]


# --- submit -------------------------------------------------------------------------------------


class _JsonlFile:
    """One input file being written: a temporary file on disk, its checksum and its custom_ids."""

    def __init__(self) -> None:
        self.fh: IO[bytes] = tempfile.TemporaryFile()
        self.sha = hashlib.sha256()
        self.bytes = 0
        self.hashes: list[str] = []

    def fits(self, size: int, *, max_requests: int, max_bytes: int) -> bool:
        return len(self.hashes) < max_requests and self.bytes + size <= max_bytes

    def add(self, digest: str, line: bytes) -> None:
        self.fh.write(line)
        self.sha.update(line)
        self.bytes += len(line)
        self.hashes.append(digest)


def batch_line(*, digest: str, body: dict) -> bytes:
    """One JSONL request line: custom_id = the generation-input hash."""
    line = {"custom_id": digest, "method": "POST", "url": ENDPOINT, "body": body}
    return (json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


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
    in_flight: set[str] = set()
    for hashes in OpenAIBatch.objects.filter(
        target_date=target_date, state__in=OpenAIBatch.OPEN_STATES
    ).values_list("input_hashes", flat=True):
        in_flight.update(hashes)
    seen: set[str] = set()
    current = _JsonlFile() if not dry_run else None
    sizes = [0, 0]  # requests, bytes of the file a dry run would be writing
    try:
        for page in nightly_plan_pages(
            target_date=target_date, generator=f"openai:{model}", user_id=user_id, page_size=page_size,
            compute_stale_natal=dry_run, language=settings.FORTUNE_LANGUAGE,
        ):
            fresh = {}
            for digest, group in page.groups.items():
                if digest in in_flight:
                    report.already_submitted += len(group.user_ids)
                elif digest in seen:
                    report.users += len(group.user_ids)  # a later page's users of an input already written
                else:
                    fresh[digest] = group
            stored = generation_ids_by_hash(hashes=fresh) if fresh else {}
            for digest, group in fresh.items():
                if digest in stored:
                    report.already_stored += len(group.user_ids)
                    continue
                seen.add(digest)
                line = batch_line(digest=digest, body=chat_completion_body(model=model,
                                                                           messages=build_messages(group.inp)))
                tokens_in, tokens_out = estimate_tokens(group.inp)
                report.tokens_in += tokens_in
                report.tokens_out += tokens_out
                report.users += len(group.user_ids)
                report.requests += 1
                if current is None:  # dry run: only count what the files would hold
                    if sizes[0] >= max_requests or sizes[1] + len(line) > max_bytes:
                        report.files.append((sizes[0], sizes[1]))
                        sizes = [0, 0]
                    sizes = [sizes[0] + 1, sizes[1] + len(line)]
                    continue
                if current.hashes and not current.fits(len(line), max_requests=max_requests, max_bytes=max_bytes):
                    _submit_file(client=client, jsonl=current, target_date=target_date, model=model, report=report)
                    current.fh.close()
                    current = _JsonlFile()
                current.add(digest, line)
        if current is None:
            if sizes[0]:
                report.files.append((sizes[0], sizes[1]))
        elif current.hashes:
            _submit_file(client=client, jsonl=current, target_date=target_date, model=model, report=report)
    except _SubmitStopped:
        pass
    finally:
        if current is not None:
            current.fh.close()
    report.cost_batch = _cost(model, Tier.BATCH, report.tokens_in, report.tokens_out)
    report.cost_standard = _cost(model, Tier.STANDARD, report.tokens_in, report.tokens_out)
    logger.info("batch api submit %s%s: %d users, %d requests in %d file(s), %d batch(es) created; "
                "~$%s (standard ~$%s)%s", target_date, " (dry run)" if dry_run else "", report.users,
                report.requests, len(report.files), report.batches_created, report.cost_batch, report.cost_standard,
                f"; stopped: {report.error}" if report.error else "")
    return report


class _SubmitStopped(Exception):
    pass


def _cost(model: str, tier: Tier, tokens_in: int, tokens_out: int) -> Decimal:
    return cost_estimate(model=model, tier=tier, tokens_in=tokens_in, tokens_out=tokens_out)


def _submit_file(
    *, client: openai.OpenAI, jsonl: _JsonlFile, target_date: dt.date, model: str, report: SubmitReport,
) -> None:
    key = uuid.uuid4().hex
    row = OpenAIBatch.objects.create(
        target_date=target_date, model=model, metadata_key=key, request_count=len(jsonl.hashes),
        file_bytes=jsonl.bytes, file_sha256=jsonl.sha.hexdigest(), input_hashes=jsonl.hashes,
    )
    report.files.append((len(jsonl.hashes), jsonl.bytes))
    jsonl.fh.seek(0)
    try:
        upload = client.files.create(file=(FILENAME.format(key=key), jsonl.fh), purpose="batch")
    except openai.APIError as exc:
        _stop(row, report, _error_text("upload", exc))
    row.input_file_id, row.state = upload.id, OpenAIBatch.State.UPLOADED
    row.save(update_fields=["input_file_id", "state"])
    if not _create_batch(client=client, row=row):
        _stop(row, report, row.last_error)
    report.batches_created += 1


def _stop(row: OpenAIBatch, report: SubmitReport, error: str) -> None:
    row.last_error = error
    row.save(update_fields=["last_error"])
    report.error = error
    logger.warning("batch api: %s (batch row %s, %s)", error, row.pk, row.state)
    raise _SubmitStopped


def _create_batch(*, client: openai.OpenAI, row: OpenAIBatch) -> bool:
    """batches.create for an uploaded row, recorded; False (error on the row) if the call failed."""
    try:
        batch = client.batches.create(
            input_file_id=row.input_file_id, endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW,
            metadata={METADATA_KEY: row.metadata_key, "target_date": row.target_date.isoformat()},
        )
    except openai.APIError as exc:
        row.last_error = _error_text("batch create", exc)
        row.save(update_fields=["last_error"])
        return False
    _adopt(row, batch)
    return True


def _adopt(row: OpenAIBatch, batch) -> None:
    row.batch_id, row.input_file_id = batch.id, batch.input_file_id
    row.state, row.remote_status, row.submitted_at = OpenAIBatch.State.SUBMITTED, batch.status, timezone.now()
    row.last_error = ""
    row.save(update_fields=["batch_id", "input_file_id", "state", "remote_status", "submitted_at", "last_error"])


def openai_batch_submit_summary(*, report: SubmitReport) -> str:
    """One line for stdout and the run report (also what --dry-run prints for the day ahead)."""
    files = ", ".join(f"{count} requests/{size / 1_000_000:.1f} MB" for count, size in report.files) or "none"
    text = (
        f"batch api {'dry run ' if report.dry_run else ''}{report.target_date}: {report.users} users, "
        f"{report.requests} requests ({report.already_stored} users already stored, {report.already_submitted} "
        f"already submitted); files: {files}; {report.batches_created} batches created; "
        f"~{report.tokens_in}/{report.tokens_out} tokens, ~${report.cost_batch} on the Batch API vs "
        f"~${report.cost_standard} standard ({report.model})"
    )
    return text + (f"; stopped: {report.error}" if report.error else "")


def openai_batch_collect_summary(*, report: CollectReport) -> str:
    return (
        f"batch api collect: {report.polled} polled, {report.collected} collected, {report.still_open} open, "
        f"{report.failed_batches} failed; {report.stored_users} users stored from {report.lines_ok} lines "
        f"({report.lines_failed} failed lines left for the synchronous pass, {report.lines_orphaned} unneeded"
        f"{f', {report.lines_unmatched} damaged lines naming no input' if report.lines_unmatched else ''}); "
        f"{report.download_failures} download failures; ~${report.cost_batch} (standard ~${report.cost_standard})"
    )


# --- resume -------------------------------------------------------------------------------------


def _remote_batches(client: openai.OpenAI, *, since: dt.datetime) -> dict[str, object]:
    """metadata key -> batch, for our batches created since `since` (the list is newest first)."""
    found = {}
    floor = (since - LIST_MARGIN).timestamp()
    for batch in client.batches.list(limit=100):
        if batch.created_at < floor:
            break
        key = (batch.metadata or {}).get(METADATA_KEY)
        if key:
            found.setdefault(key, batch)
    return found


def _remote_files(client: openai.OpenAI) -> dict[str, str]:
    return {f.filename: f.id for f in client.files.list(purpose="batch")}


def openai_batch_resume(
    *, target_date: dt.date | None = None, base_date: dt.date | None = None,
) -> ResumeReport:
    """Finish or undo what a killed process left between recording a file and creating its batch.

    A row whose batch exists (found by metadata key) is adopted, never created again. An uploaded
    row gets its batch if its target date is still RESUBMIT_MIN_DAYS_AHEAD ahead of base_date, else its
    file is deleted; a planned row whose upload cannot be found is discarded.

    Only target_date's rows (every row when None): the caller holds that date's nightly_lock, and a
    planned or uploaded row of another date may be a live submission of the run holding *its* lock
    (mid-upload, or between the upload and batches.create) — resuming it would create a second
    batch for the same file, or discard a file about to be submitted.
    """
    report = ResumeReport()
    rows = OpenAIBatch.objects.filter(state__in=[OpenAIBatch.State.PLANNED, OpenAIBatch.State.UPLOADED])
    if target_date is not None:
        rows = rows.filter(target_date=target_date)
    rows = list(rows.order_by("pk"))
    if not rows:
        return report
    base_date = base_date or nightly_today()
    client = openai_batch_client()
    try:
        remote = _remote_batches(client, since=min(row.created_at for row in rows))
        files = _remote_files(client) if any(row.state == OpenAIBatch.State.PLANNED for row in rows) else {}
    except openai.APIError as exc:
        # Nothing is created without reconciling first; the rows stay open (and their inputs out of
        # new submissions) until a later call can list.
        logger.warning("batch api resume: %s", _error_text("listing batches and files", exc))
        report.error = _error_text("listing batches and files", exc)
        return report
    for row in rows:
        batch = remote.get(row.metadata_key)
        if batch is not None:
            _adopt(row, batch)
            report.adopted += 1
            continue
        if row.state == OpenAIBatch.State.PLANNED:
            file_id = files.get(FILENAME.format(key=row.metadata_key))
            if file_id is None:
                _discard(row, DISCARDED_UNCONFIRMED)
                report.discarded += 1
                continue
            row.input_file_id, row.state = file_id, OpenAIBatch.State.UPLOADED
            row.save(update_fields=["input_file_id", "state"])
        if (row.target_date - base_date).days >= RESUBMIT_MIN_DAYS_AHEAD:
            if _create_batch(client=client, row=row):
                report.created += 1
            continue
        try:
            client.files.delete(row.input_file_id)
        except openai.NotFoundError:
            pass
        except openai.APIError as exc:  # the file expires on its own; the row is settled anyway
            logger.warning("batch api: could not delete file %s: %s", row.input_file_id, exc)
        _discard(row, DISCARDED_TOO_LATE.format(target_date=row.target_date))
        report.discarded += 1
    if report.adopted or report.created or report.discarded:
        logger.warning("batch api resume: %d adopted, %d created, %d discarded", report.adopted, report.created,
                       report.discarded)
    return report


def _discard(row: OpenAIBatch, reason: str) -> None:
    row.state, row.last_error = OpenAIBatch.State.DISCARDED, reason[:500]
    row.save(update_fields=["state", "last_error"])


# --- collect ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    content: str
    tokens_in: int
    tokens_out: int
    row: OpenAIBatch


def _object(value: object) -> dict:
    """value if it is a JSON object, else {} (a damaged output line's parts are read as missing)."""
    return value if isinstance(value, dict) else {}


def _tokens(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _parse_output(
    text: str, *, row: OpenAIBatch, lines: dict[str, _Line], counts: dict[int, list[int]], report: CollectReport,
) -> None:
    """Keep the 200 lines (content not validated yet); count the rest failed and all tokens billed.

    A line is the server's, not ours, so none of it is trusted: a line that is not a JSON object, or
    names no custom_id, cannot be matched to an input; it is counted (report.lines_unmatched) and
    skipped, and whatever input it was for stays missing for the synchronous pass. A line that names
    its custom_id but is damaged anywhere else fails that input only. Neither ever raises.
    """
    tally = counts.setdefault(row.pk, [0, 0, 0])  # failed lines, tokens in, tokens out
    for raw in text.splitlines():
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            line = None
        custom_id = line.get("custom_id") if isinstance(line, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            report.lines_unmatched += 1
            logger.warning("batch api: %s line of batch %s names no custom_id (%s): skipped; its input goes "
                           "synchronous", "an output" if isinstance(line, dict) else "a non-object", row.batch_id,
                           raw[:80])
            continue
        response = _object(line.get("response"))
        body = _object(response.get("body"))
        usage = _object(body.get("usage"))
        tokens_in, tokens_out = _tokens(usage.get("prompt_tokens")), _tokens(usage.get("completion_tokens"))
        tally[1] += tokens_in
        tally[2] += tokens_out
        choices = body.get("choices")
        choice = _object(choices[0] if isinstance(choices, list) and choices else None)
        message = _object(choice.get("message"))
        content = message.get("content")
        if line.get("error") or response.get("status_code") != 200 or message.get("refusal") or \
                choice.get("finish_reason") not in ("stop", None) or not isinstance(content, str) or not content:
            tally[0] += 1
            continue
        lines[custom_id] = _Line(content, tokens_in, tokens_out, row)


def _download(client: openai.OpenAI, file_id: str) -> str:
    return client.files.content(file_id).text if file_id else ""


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
    ready: list[OpenAIBatch] = []
    for row in rows:
        report.polled += 1
        try:
            batch = client.batches.retrieve(row.batch_id)
        except openai.APIError as exc:
            row.last_error = _error_text("batch retrieve", exc)
            row.save(update_fields=["last_error"])
            report.still_open += 1
            continue
        row.remote_status = batch.status
        row.output_file_id, row.error_file_id = batch.output_file_id or "", batch.error_file_id or ""
        row.save(update_fields=["remote_status", "output_file_id", "error_file_id"])
        if batch.status == "failed":
            errors = "; ".join(f"{e.code}: {e.message}" for e in (batch.errors.data or [])) if batch.errors else ""
            row.state, row.last_error = OpenAIBatch.State.FAILED, REMOTE_FAILED.format(errors=errors)[:500]
            row.failed_lines, row.collected_at = row.request_count, timezone.now()
            row.save(update_fields=["state", "last_error", "failed_lines", "collected_at"])
            report.failed_batches += 1
        elif batch.status in REMOTE_DONE:
            ready.append(row)
        else:
            report.still_open += 1
    groups: dict[tuple[dt.date, str], list[OpenAIBatch]] = {}
    for row in ready:
        groups.setdefault((row.target_date, row.model), []).append(row)
    for (day, model), group in groups.items():
        chunk: list[OpenAIBatch] = []
        for row in group:
            if chunk and sum(r.request_count for r in chunk) + row.request_count > COLLECT_LINES_PER_PASS:
                _collect_pass(client=client, rows=chunk, target_date=day, model=model, report=report,
                              page_size=page_size)
                chunk = []
            chunk.append(row)
        _collect_pass(client=client, rows=chunk, target_date=day, model=model, report=report,
                      page_size=page_size)
    report.seconds = time.monotonic() - started
    logger.info("batch api collect: %d polled, %d collected, %d open, %d failed; %d users stored, lines %d ok / "
                "%d failed / %d orphaned / %d unmatched; %d download failures", report.polled, report.collected,
                report.still_open, report.failed_batches, report.stored_users, report.lines_ok, report.lines_failed,
                report.lines_orphaned, report.lines_unmatched, report.download_failures)
    return report


def _collect_pass(
    *, client: openai.OpenAI, rows: list[OpenAIBatch], target_date: dt.date, model: str, report: CollectReport,
    page_size: int,
) -> None:
    lines: dict[str, _Line] = {}
    counts: dict[int, list[int]] = {}
    downloaded: list[OpenAIBatch] = []
    for row in rows:
        try:
            output, errors = _download(client, row.output_file_id), _download(client, row.error_file_id)
        except openai.APIError as exc:
            row.download_failures += 1
            row.last_error = _error_text("download", exc)
            row.save(update_fields=["download_failures", "last_error"])
            report.download_failures += 1
            report.still_open += 1
            continue
        _parse_output(output, row=row, lines=lines, counts=counts, report=report)
        _parse_output(errors, row=row, lines=lines, counts=counts, report=report)
        downloaded.append(row)
    if not downloaded:
        return
    # As in the synchronous engine: the cyclic GC would rescan the lines' objects over and over; they
    # are freed by reference counting.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        per_row = _store_lines(lines=lines, target_date=target_date, model=model, report=report,
                               page_size=page_size)
    finally:
        if gc_was_enabled:
            gc.enable()
    now = timezone.now()
    for row in downloaded:
        failed, tokens_in, tokens_out = counts[row.pk]
        ok, invalid, users = per_row.get(row.pk, (0, 0, 0))
        row.completed_lines, row.failed_lines = ok, failed + invalid
        row.stored_users, row.tokens_in, row.tokens_out = users, tokens_in, tokens_out
        row.estimated_cost = _cost(model, Tier.BATCH, tokens_in, tokens_out)
        row.state, row.collected_at, row.last_error = OpenAIBatch.State.COLLECTED, now, ""
        row.save(update_fields=["completed_lines", "failed_lines", "stored_users", "tokens_in", "tokens_out",
                                "estimated_cost", "state", "collected_at", "last_error"])
        report.collected += 1
        report.lines_failed += row.failed_lines
        report.tokens_in += tokens_in
        report.tokens_out += tokens_out
    report.lines_orphaned += sum(1 for line in lines.values() if line.content)
    report.cost_batch += _cost(model, Tier.BATCH, sum(counts[r.pk][1] for r in downloaded),
                               sum(counts[r.pk][2] for r in downloaded))
    report.cost_standard += _cost(model, Tier.STANDARD, sum(counts[r.pk][1] for r in downloaded),
                                  sum(counts[r.pk][2] for r in downloaded))


def _store_lines(
    *, lines: dict[str, _Line], target_date: dt.date, model: str, report: CollectReport,
    page_size: int,
) -> dict[int, tuple[int, int, int]]:
    """Store the lines' fortunes for every eligible user whose current input is one of them.

    One flush per plan page through the engine's ResultWriter (its own thread and connection on
    PostgreSQL, so parsing and validating go on while the database writes). Returns row pk ->
    (lines ok, lines invalid, users). A line used is emptied (content ""), so what still has content
    afterwards matched nobody (orphaned).
    """
    per_row: dict[int, list[int]] = {}
    used: dict[str, int] = {}  # hash -> generation id, once stored or found stored
    handed: dict[str, list[int]] = {}  # hash with the writer -> later pages' users waiting for its id
    late: list[tuple[int, int]] = []  # (user, generation id) of those, for the next flush
    writer = ResultWriter(for_date=target_date, provider="openai", model=model, replace=False,
                         threaded=writer_threaded())

    def settle(flushes: list[Flush]) -> None:
        for flush in flushes:
            used.update(flush.ids)
            report.stored_users += flush.stored
            for digest in flush.waiting:
                late.extend((user_id, flush.ids[digest]) for user_id in handed.pop(digest))

    try:
        for page in nightly_plan_pages(target_date=target_date, generator=f"openai:{model}", page_size=page_size,
                                     language=settings.FORTUNE_LANGUAGE):
            matched = {d: g for d, g in page.groups.items() if d in lines}
            if not matched:
                continue
            unknown = [d for d in matched if d not in used and d not in handed]
            stored = generation_ids_by_hash(hashes=unknown) if unknown else {}
            items, waiting, reused = [], {}, late
            late = []
            for digest, group in matched.items():
                line = lines[digest]
                tally = per_row.setdefault(line.row.pk, [0, 0, 0])
                if digest in handed:
                    handed[digest].extend(group.user_ids)
                    tally[2] += len(group.user_ids)
                    continue
                generation_id = used.get(digest) or stored.get(digest)
                if generation_id is not None:
                    reused.extend((user_id, generation_id) for user_id in group.user_ids)
                    tally[2] += len(group.user_ids)
                    if digest not in used:  # stored by another path: keep that one
                        used[digest] = generation_id
                        tally[0] += 1
                        report.lines_ok += 1
                        line.content = ""
                    continue
                if not line.content:
                    continue  # invalid: left for the synchronous pass
                try:
                    part = completion_part(finish_reason="stop", refusal=None, content=line.content)
                except ProviderError:
                    tally[1] += 1
                    line.content = ""
                    continue
                line.content = ""
                tally[0] += 1
                tally[2] += len(group.user_ids)
                items.append(GeneratedItem(inp=group.inp, hash=digest, generated=Generated(
                    content=group.inp.compose(part), tokens_in=line.tokens_in, tokens_out=line.tokens_out,
                    service_tier="batch")))
                waiting[digest] = group.user_ids
                handed[digest] = []
            if items or reused:
                writer.submit(Flush(items=items, reused=reused, waiting=waiting))
                report.stored_generations += len(items)
                report.lines_ok += len(items)
            settle(writer.done())
        while writer.outstanding or late:
            settle(writer.done(wait=True))
            if late:
                writer.submit(Flush(items=[], reused=late, waiting={}))
                late = []
    finally:
        writer.close()
    return {pk: (ok, invalid, users) for pk, (ok, invalid, users) in per_row.items()}


# --- cancel -------------------------------------------------------------------------------------


def openai_batch_settle(
    *, target_date: dt.date, base_date: dt.date | None = None, wait_seconds: float | None = None,
    poll_seconds: float = 5.0, stop: threading.Event | None = None,
) -> CancelReport:
    """Before the synchronous pass for target_date: collect what is done, cancel what is still open,
    wait for it (bounded), collect what that left. Whatever is still missing afterwards is the
    synchronous pass's. The report's collect holds both collections' totals."""
    first = openai_batch_collect(target_date=target_date, base_date=base_date)
    if not first.still_open:
        return CancelReport(collect=first)
    report = openai_batch_cancel_open(target_date=target_date, wait_seconds=wait_seconds, poll_seconds=poll_seconds,
                                   stop=stop, base_date=base_date)
    second = report.collect
    for name in ("collected", "failed_batches", "download_failures", "lines_ok", "lines_failed", "lines_orphaned",
                 "lines_unmatched", "stored_users", "stored_generations", "tokens_in", "tokens_out", "cost_batch",
                 "cost_standard", "seconds"):
        setattr(second, name, getattr(first, name) + getattr(second, name))
    second.polled = first.polled
    return report



def openai_batch_cancel_open(
    *, target_date: dt.date, wait_seconds: float | None = None, poll_seconds: float = 5.0,
    stop: threading.Event | None = None, base_date: dt.date | None = None,
) -> CancelReport:
    """Cancel target_date's batches still open, wait (at most wait_seconds, default
    FORTUNE_BATCH_CANCEL_WAIT_SECONDS) for them to settle, then collect whatever they left."""
    report = CancelReport()
    client = openai_batch_client()
    wait_seconds = settings.FORTUNE_BATCH_CANCEL_WAIT_SECONDS if wait_seconds is None else wait_seconds
    stop = stop or threading.Event()
    rows = list(OpenAIBatch.objects.filter(target_date=target_date, state=OpenAIBatch.State.SUBMITTED))
    open_rows = []
    for row in rows:
        try:
            batch = client.batches.retrieve(row.batch_id)
            if batch.status in REMOTE_OPEN and batch.status != "cancelling":
                batch = client.batches.cancel(row.batch_id)
                row.cancel_requested_at = timezone.now()
                report.cancel_requested += 1
        except openai.APIError as exc:
            row.last_error = _error_text("batch cancel", exc)
            row.save(update_fields=["last_error"])
            open_rows.append(row)
            continue
        row.remote_status = batch.status
        row.save(update_fields=["remote_status", "cancel_requested_at"])
        if batch.status in REMOTE_OPEN:
            open_rows.append(row)
    deadline = time.monotonic() + wait_seconds
    while open_rows and time.monotonic() < deadline:
        if stop.wait(min(poll_seconds, max(0.0, deadline - time.monotonic()))):
            break
        still = []
        for row in open_rows:
            try:
                status = client.batches.retrieve(row.batch_id).status
            except openai.APIError:
                still.append(row)
                continue
            if status in REMOTE_OPEN:
                still.append(row)
        open_rows = still
    report.collect = openai_batch_collect(target_date=target_date, base_date=base_date)
    report.still_open = report.collect.still_open
    if report.still_open:
        logger.warning("batch api: %d batch(es) for %s still open after %g s: their inputs go synchronous",
                       report.still_open, target_date, wait_seconds)
    return report


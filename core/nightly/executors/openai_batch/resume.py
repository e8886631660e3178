"""Finish or undo what a killed process left between recording a file and creating its batch."""

import datetime as dt
import logging

import openai

from core.models import OpenAIBatch
from core.nightly.dates import nightly_today
from core.nightly.executors.openai_batch.client import (
    FILENAME,
    error_text,
    openai_batch_client,
    remote_batches,
    remote_files,
)
from core.nightly.executors.openai_batch.reports import ResumeReport
from core.nightly.executors.openai_batch.rows import batch_adopt, batch_create, row_discard

logger = logging.getLogger("fortuna.nightly.openai_batch")

RESUBMIT_MIN_DAYS_AHEAD = 2  # an uploaded file is still worth a batch only this many days ahead
DISCARDED_UNCONFIRMED = "upload never confirmed and no such file on the server: its inputs go synchronous"
DISCARDED_TOO_LATE = "uploaded but not submitted before {target_date} was due: file deleted, inputs go synchronous"


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
    client = openai_batch_client()
    try:
        remote = remote_batches(client, since=min(row.created_at for row in rows))
        files = remote_files(client) if any(row.state == OpenAIBatch.State.PLANNED for row in rows) else {}
    except openai.APIError as exc:
        # Nothing is created without reconciling first; the rows stay open (and their inputs out of
        # new submissions) until a later call can list.
        report.error = error_text("listing batches and files", exc)
        logger.warning("batch api resume: %s", report.error)
        return report
    for row in rows:
        _row_resume(client, row, remote=remote, files=files, base_date=base_date or nightly_today(), report=report)
    if report.adopted or report.created or report.discarded:
        logger.warning("batch api resume: %d adopted, %d created, %d discarded", report.adopted, report.created,
                       report.discarded)
    return report


def _row_resume(client: openai.OpenAI, row: OpenAIBatch, *, remote: dict, files: dict[str, str],
                base_date: dt.date, report: ResumeReport) -> None:
    batch = remote.get(row.metadata_key)
    if batch is not None:
        batch_adopt(row, batch)
        report.adopted += 1
        return
    if row.state == OpenAIBatch.State.PLANNED:
        file_id = files.get(FILENAME.format(key=row.metadata_key))
        if file_id is None:
            row_discard(row, DISCARDED_UNCONFIRMED)
            report.discarded += 1
            return
        row.input_file_id, row.state = file_id, OpenAIBatch.State.UPLOADED
        row.save(update_fields=["input_file_id", "state"])
    if (row.target_date - base_date).days >= RESUBMIT_MIN_DAYS_AHEAD:
        if batch_create(client=client, row=row):
            report.created += 1
        return
    try:
        client.files.delete(row.input_file_id)
    except openai.NotFoundError:
        pass
    except openai.APIError as exc:  # the file expires on its own; the row is settled anyway
        logger.warning("batch api: could not delete file %s: %s", row.input_file_id, exc)
    row_discard(row, DISCARDED_TOO_LATE.format(target_date=row.target_date))
    report.discarded += 1

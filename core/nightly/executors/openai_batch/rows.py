"""The remote steps of one OpenAIBatch row, each recorded on the row before the next starts
(planned → uploaded → submitted, or discarded): what makes a killed process resumable
(core.nightly.executors.openai_batch.resume)."""

import datetime as dt
import logging
import uuid

import openai
from django.utils import timezone

from core.models import OpenAIBatch
from core.nightly.executors.openai_batch.client import (
    COMPLETION_WINDOW,
    ENDPOINT,
    FILENAME,
    METADATA_KEY,
    error_text,
)
from core.nightly.executors.openai_batch.files import JsonlFile

logger = logging.getLogger("fortuna.nightly.openai_batch")


class SubmitStopped(Exception):
    """A remote step of a submission failed: the error is on the row; nothing more is sent."""


def file_submit(*, client: openai.OpenAI, jsonl: JsonlFile, target_date: dt.date, model: str) -> OpenAIBatch:
    """Record the file (planned), upload it (uploaded), create its batch (submitted).

    Raises SubmitStopped (the error on the row) if the upload or the create failed."""
    key = uuid.uuid4().hex
    row = OpenAIBatch.objects.create(
        target_date=target_date, model=model, metadata_key=key, request_count=len(jsonl.hashes),
        file_bytes=jsonl.bytes, file_sha256=jsonl.sha.hexdigest(), input_hashes=jsonl.hashes,
    )
    jsonl.fh.seek(0)
    try:
        upload = client.files.create(file=(FILENAME.format(key=key), jsonl.fh), purpose="batch")
    except openai.APIError as exc:
        _stop(row, error_text("upload", exc))
    row.input_file_id, row.state = upload.id, OpenAIBatch.State.UPLOADED
    row.save(update_fields=["input_file_id", "state"])
    if not batch_create(client=client, row=row):
        _stop(row, row.last_error)
    return row


def _stop(row: OpenAIBatch, error: str) -> None:
    row.last_error = error
    row.save(update_fields=["last_error"])
    logger.warning("batch api: %s (batch row %s, %s)", error, row.pk, row.state)
    raise SubmitStopped(error)


def batch_create(*, client: openai.OpenAI, row: OpenAIBatch) -> bool:
    """batches.create for an uploaded row, recorded; False (error on the row) if the call failed."""
    try:
        batch = client.batches.create(
            input_file_id=row.input_file_id, endpoint=ENDPOINT, completion_window=COMPLETION_WINDOW,
            metadata={METADATA_KEY: row.metadata_key, "target_date": row.target_date.isoformat()},
        )
    except openai.APIError as exc:
        row.last_error = error_text("batch create", exc)
        row.save(update_fields=["last_error"])
        return False
    batch_adopt(row, batch)
    return True


def batch_adopt(row: OpenAIBatch, batch) -> None:
    """The row's batch exists (just created, or found by its metadata key): the row is submitted."""
    row.batch_id, row.input_file_id = batch.id, batch.input_file_id
    row.state, row.remote_status, row.submitted_at = OpenAIBatch.State.SUBMITTED, batch.status, timezone.now()
    row.last_error = ""
    row.save(update_fields=["batch_id", "input_file_id", "state", "remote_status", "submitted_at", "last_error"])


def row_discard(row: OpenAIBatch, reason: str) -> None:
    row.state, row.last_error = OpenAIBatch.State.DISCARDED, reason[:500]
    row.save(update_fields=["state", "last_error"])

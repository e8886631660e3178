"""Before the synchronous pass of a target date: collect what is done, cancel what is still open,
wait for it (bounded) and collect what that left."""

import datetime as dt
import logging
import threading
import time

import openai
from django.conf import settings
from django.utils import timezone

from core.models import OpenAIBatch
from core.nightly.executors.openai_batch.client import REMOTE_OPEN, error_text, openai_batch_client
from core.nightly.executors.openai_batch.collect import openai_batch_collect
from core.nightly.executors.openai_batch.reports import CancelReport, CollectReport

logger = logging.getLogger("fortuna.nightly.openai_batch")


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
    for name in CollectReport.SUMMED:
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
    rows = list(OpenAIBatch.objects.filter(target_date=target_date, state=OpenAIBatch.State.SUBMITTED))
    open_rows = [row for row in rows if _cancel(client, row, report)]
    _wait_settled(client, open_rows, wait_seconds=wait_seconds, poll_seconds=poll_seconds,
                  stop=stop or threading.Event())
    report.collect = openai_batch_collect(target_date=target_date, base_date=base_date)
    report.still_open = report.collect.still_open
    if report.still_open:
        logger.warning("batch api: %d batch(es) for %s still open after %g s: their inputs go synchronous",
                       report.still_open, target_date, wait_seconds)
    return report


def _cancel(client: openai.OpenAI, row: OpenAIBatch, report: CancelReport) -> bool:
    """Ask for the row's batch to be cancelled if it is still running; True if it is still open."""
    try:
        batch = client.batches.retrieve(row.batch_id)
        if batch.status in REMOTE_OPEN and batch.status != "cancelling":
            batch = client.batches.cancel(row.batch_id)
            row.cancel_requested_at = timezone.now()
            report.cancel_requested += 1
    except openai.APIError as exc:
        row.last_error = error_text("batch cancel", exc)
        row.save(update_fields=["last_error"])
        return True
    row.remote_status = batch.status
    row.save(update_fields=["remote_status", "cancel_requested_at"])
    return batch.status in REMOTE_OPEN


def _wait_settled(client: openai.OpenAI, open_rows: list[OpenAIBatch], *, wait_seconds: float, poll_seconds: float,
                  stop: threading.Event) -> None:
    """Poll the open batches until none is open, the wait runs out or a stop comes."""
    deadline = time.monotonic() + wait_seconds
    while open_rows and time.monotonic() < deadline:
        if stop.wait(min(poll_seconds, max(0.0, deadline - time.monotonic()))):
            return
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

"""The coordinator's re-sends, with tasks run eagerly: a chunk nobody claimed within the claim timeout
is sent again (backing off), a send the broker refuses is kept and tried again at the next poll. The
cut-offs are the database's clock (SQLite and PostgreSQL alike). Real brokers: tests/faults/test_celery_chunks.py."""

import datetime as dt
import io
import time
from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from core.batch.celery_backend import _Coordinator
from core.batch.dates import BatchTarget
from core.batch.guards import StopToken
from core.batch.options import BatchOptions
from core.batch.progress import ProgressReporter
from core.fortunes.providers import get_provider
from core.models import BatchChunk, BatchRun
from fortuna_api.celery import app
from tests.batch.celery_helpers import celery_run, users_with_shared_inputs
from tests.batch.helpers import BASE, TARGET

pytestmark = pytest.mark.django_db(transaction=True)


def _coordinator(run: BatchRun) -> _Coordinator:
    coordinator = _Coordinator(run=run, target=BatchTarget(base_date=BASE, target_date=TARGET),
                               options=BatchOptions(base_date=BASE), provider=get_provider(name="local"),
                               stop=StopToken(), deadline=time.monotonic() + 60, chunk_size=4, stale_seconds=60,
                               poll_seconds=0)
    coordinator.progress = ProgressReporter(total=4, stream=io.StringIO(), is_tty=False)
    return coordinator


def _queued_since(chunk: BatchChunk, seconds: float, *, dispatches: int) -> None:
    BatchChunk.objects.filter(pk=chunk.pk).update(state=BatchChunk.State.QUEUED, dispatches=dispatches, attempts=0,
                                                  heartbeat_at=timezone.now() - dt.timedelta(seconds=seconds))


def test_an_unclaimed_chunk_is_sent_again_after_the_claim_timeout_then_after_twice_as_long(eager, settings):
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = 10
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=4)
    chunk = BatchChunk.objects.get(run=run)
    coordinator = _coordinator(run)

    _queued_since(chunk, 5, dispatches=1)  # within the claim timeout: left alone
    assert coordinator._poll(force=True) is True
    assert BatchChunk.objects.get(pk=chunk.pk).dispatches == 1

    _queued_since(chunk, 15, dispatches=2)  # sent twice already: the next send after 2 × 10 s
    assert coordinator._poll(force=True) is True
    assert BatchChunk.objects.get(pk=chunk.pk).dispatches == 2

    _queued_since(chunk, 15, dispatches=1)  # its message was lost: sent again, and run (eagerly)
    assert coordinator._poll(force=True) is False
    chunk.refresh_from_db()
    assert (chunk.state, chunk.dispatches, chunk.attempts) == (BatchChunk.State.DONE, 2, 1)


def test_a_refused_send_never_raises_and_goes_out_at_the_next_poll(eager, settings):
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = 60
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=4)
    chunk = BatchChunk.objects.get(run=run)
    _queued_since(chunk, 0, dispatches=0)
    coordinator = _coordinator(run)
    task = app.tasks["fortuna.batch_chunk_generate"]
    with mock.patch.object(task, "apply_async", side_effect=OperationalError("Connection refused")) as refused:
        assert coordinator._dispatch(chunk.pk, chunk.index) is False  # retried, then kept: not raised
    assert refused.call_count == 3
    assert coordinator.unsent == {chunk.pk: chunk.index}
    assert coordinator._poll(force=True) is False  # the broker is back: sent, run, done
    chunk.refresh_from_db()
    assert (chunk.state, chunk.dispatches) == (BatchChunk.State.DONE, 1)
    assert not coordinator.unsent

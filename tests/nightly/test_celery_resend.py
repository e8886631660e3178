"""The celery executor's re-sends, with tasks run eagerly: a chunk nobody claimed within the claim timeout
is sent again (backing off), a send the broker refuses is kept and tried again at the next poll. The
cut-offs are the database's clock (SQLite and PostgreSQL alike). Real brokers: tests/faults/test_celery_chunks.py."""

import datetime as dt
from unittest import mock

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from core.models import CeleryChunk, NightlyRun
from core.nightly.executors.celery.chunks import OPEN_STATES
from core.nightly.executors.celery.dispatch import ChunkDispatcher
from fortuna_api.celery import app
from tests.nightly.celery_helpers import celery_executor, celery_run, users_with_shared_inputs

pytestmark = pytest.mark.django_db(transaction=True)


def _dispatcher(run: NightlyRun) -> ChunkDispatcher:
    """The dispatch bookkeeping of a celery executor for the run (the executor runs it at each poll)."""
    return celery_executor(run).dispatcher


def _tend(dispatcher: ChunkDispatcher) -> bool:
    """One poll's bookkeeping; True while chunks of the run are open."""
    dispatcher.tend()
    return CeleryChunk.objects.filter(run=dispatcher.run, state__in=OPEN_STATES).exists()


def _queued_since(chunk: CeleryChunk, seconds: float, *, dispatches: int) -> None:
    CeleryChunk.objects.filter(pk=chunk.pk).update(state=CeleryChunk.State.QUEUED, dispatches=dispatches, attempts=0,
                                                  heartbeat_at=timezone.now() - dt.timedelta(seconds=seconds))


def test_an_unclaimed_chunk_is_sent_again_after_the_claim_timeout_then_after_twice_as_long(eager, settings):
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = 10
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=4)
    chunk = CeleryChunk.objects.get(run=run)
    dispatcher = _dispatcher(run)

    _queued_since(chunk, 5, dispatches=1)  # within the claim timeout: left alone
    assert _tend(dispatcher) is True
    assert CeleryChunk.objects.get(pk=chunk.pk).dispatches == 1

    _queued_since(chunk, 15, dispatches=2)  # sent twice already: the next send after 2 × 10 s
    assert _tend(dispatcher) is True
    assert CeleryChunk.objects.get(pk=chunk.pk).dispatches == 2

    _queued_since(chunk, 15, dispatches=1)  # its message was lost: sent again, and run (eagerly)
    assert _tend(dispatcher) is False
    chunk.refresh_from_db()
    assert (chunk.state, chunk.dispatches, chunk.attempts) == (CeleryChunk.State.DONE, 2, 1)


def test_a_refused_send_never_raises_and_goes_out_at_the_next_poll(eager, settings):
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = 60
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=4)
    chunk = CeleryChunk.objects.get(run=run)
    _queued_since(chunk, 0, dispatches=0)
    dispatcher = _dispatcher(run)
    task = app.tasks["fortuna.celery_chunk_generate"]
    with mock.patch.object(task, "apply_async", side_effect=OperationalError("Connection refused")) as refused:
        assert dispatcher.dispatch(chunk.pk, chunk.index) is False  # retried, then kept: not raised
    assert refused.call_count == 3
    assert dispatcher.unsent == {chunk.pk: chunk.index}
    assert _tend(dispatcher) is False  # the broker is back: sent, run, done
    chunk.refresh_from_db()
    assert (chunk.state, chunk.dispatches) == (CeleryChunk.State.DONE, 1)
    assert not dispatcher.unsent

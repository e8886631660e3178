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

from core.fortunes.providers import get_provider
from core.models import CeleryChunk, NightlyRun
from core.nightly.celery_chunks import _Coordinator
from core.nightly.dates import NightlyTarget
from core.nightly.guards import StopToken
from core.nightly.options import NightlyOptions
from core.nightly.progress import ProgressReporter
from fortuna_api.celery import app
from tests.nightly.celery_helpers import celery_run, users_with_shared_inputs
from tests.nightly.helpers import BASE, TARGET

pytestmark = pytest.mark.django_db(transaction=True)


def _coordinator(run: NightlyRun) -> _Coordinator:
    coordinator = _Coordinator(run=run, target=NightlyTarget(base_date=BASE, target_date=TARGET),
                               options=NightlyOptions(base_date=BASE), provider=get_provider(name="local"),
                               stop=StopToken(), deadline=time.monotonic() + 60, chunk_size=4, stale_seconds=60,
                               poll_seconds=0)
    coordinator.progress = ProgressReporter(total=4, stream=io.StringIO(), is_tty=False)
    return coordinator


def _queued_since(chunk: CeleryChunk, seconds: float, *, dispatches: int) -> None:
    CeleryChunk.objects.filter(pk=chunk.pk).update(state=CeleryChunk.State.QUEUED, dispatches=dispatches, attempts=0,
                                                  heartbeat_at=timezone.now() - dt.timedelta(seconds=seconds))


def test_an_unclaimed_chunk_is_sent_again_after_the_claim_timeout_then_after_twice_as_long(eager, settings):
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = 10
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=4)
    chunk = CeleryChunk.objects.get(run=run)
    coordinator = _coordinator(run)

    _queued_since(chunk, 5, dispatches=1)  # within the claim timeout: left alone
    assert coordinator._poll(force=True) is True
    assert CeleryChunk.objects.get(pk=chunk.pk).dispatches == 1

    _queued_since(chunk, 15, dispatches=2)  # sent twice already: the next send after 2 × 10 s
    assert coordinator._poll(force=True) is True
    assert CeleryChunk.objects.get(pk=chunk.pk).dispatches == 2

    _queued_since(chunk, 15, dispatches=1)  # its message was lost: sent again, and run (eagerly)
    assert coordinator._poll(force=True) is False
    chunk.refresh_from_db()
    assert (chunk.state, chunk.dispatches, chunk.attempts) == (CeleryChunk.State.DONE, 2, 1)


def test_a_refused_send_never_raises_and_goes_out_at_the_next_poll(eager, settings):
    settings.FORTUNE_CELERY_CLAIM_TIMEOUT = 60
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=4)
    chunk = CeleryChunk.objects.get(run=run)
    _queued_since(chunk, 0, dispatches=0)
    coordinator = _coordinator(run)
    task = app.tasks["fortuna.celery_chunk_generate"]
    with mock.patch.object(task, "apply_async", side_effect=OperationalError("Connection refused")) as refused:
        assert coordinator._dispatch(chunk.pk, chunk.index) is False  # retried, then kept: not raised
    assert refused.call_count == 3
    assert coordinator.unsent == {chunk.pk: chunk.index}
    assert coordinator._poll(force=True) is False  # the broker is back: sent, run, done
    chunk.refresh_from_db()
    assert (chunk.state, chunk.dispatches) == (CeleryChunk.State.DONE, 1)
    assert not coordinator.unsent

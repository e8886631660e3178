"""A chunk task that fails mid-way stops its own calls (issue 17.5): the inputs still queued in the
worker's generator threads are not asked once nobody will store their answers."""

import re
import time
from unittest import mock

import pytest

from core.models import CeleryChunk, FortuneGeneration, FortuneResult
from core.nightly.executors.celery import worker
from core.nightly.executors.celery.worker import celery_chunk_generate
from tests.factories import users_create_many
from tests.nightly.celery_helpers import celery_run

pytestmark = pytest.mark.django_db(transaction=True)

INPUTS = 40
INFLIGHT = 4
STORE_FAILED = "the store failed (a test's fault)"


def test_a_chunk_that_fails_stops_its_calls_in_flight(eager, openai_settings, settings):
    users_create_many(count=INPUTS, seed=91)
    run = celery_run(chunk_size=INPUTS, provider_name="openai")  # a chunk of the run's, then undone
    chunk = CeleryChunk.objects.get(run=run)
    assert chunk.inputs == INPUTS
    FortuneResult.objects.all().delete()
    FortuneGeneration.objects.all().delete()
    CeleryChunk.objects.filter(pk=chunk.pk).update(state=CeleryChunk.State.QUEUED)
    settings.FORTUNE_CELERY_INFLIGHT = INFLIGHT
    openai_settings.reset()
    openai_settings.configure(latency_ms=150)
    with mock.patch.object(worker, "nightly_output_write", side_effect=RuntimeError(STORE_FAILED)), \
            pytest.raises(RuntimeError, match=re.escape(STORE_FAILED)):
        celery_chunk_generate(chunk_id=chunk.pk)  # fails at its first flush, about a second in
    asked_at_failure = openai_settings.counters()["requests"]
    time.sleep(1.0)  # what was still queued would be asked meanwhile
    asked = openai_settings.counters()["requests"]
    assert asked_at_failure < INPUTS
    assert asked <= asked_at_failure + INFLIGHT  # only what was already in flight

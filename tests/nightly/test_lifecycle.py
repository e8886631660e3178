"""A run's heartbeat (core.nightly.lifecycle.RunRecorder) records what the ops pages show live."""

import datetime as dt

import pytest

from core.models import NightlyRun
from core.nightly.lifecycle import RunRecorder
from tests.nightly.test_scheduler import FakeExecutor, ok, page, scheduler

pytestmark = pytest.mark.django_db


def test_the_heartbeat_records_the_generations_in_flight_and_the_finish_clears_them():
    run = NightlyRun.objects.create(base_date=dt.date(2026, 3, 1), target_date=dt.date(2026, 3, 2), model="gpt-4o-mini")
    executor = FakeExecutor(answer=None)
    recorder = RunRecorder(run=run)
    recorder.scheduler = scheduler([], executor=executor)
    recorder.scheduler.take_page(page(a=[1, 2], b=[3], c=[4]))

    recorder.save()
    assert NightlyRun.objects.get(pk=run.pk).in_flight == 3
    executor.deliver("a", ok())
    recorder.scheduler.drain(timeout=0)
    recorder.save()
    assert NightlyRun.objects.get(pk=run.pk).in_flight == 2
    recorder.save(final=True)
    assert NightlyRun.objects.get(pk=run.pk).in_flight == 0


def test_a_run_row_from_before_the_heartbeat_recorded_it_has_no_in_flight():
    run = NightlyRun.objects.create(base_date=dt.date(2026, 3, 1), target_date=dt.date(2026, 3, 2))
    assert run.in_flight is None

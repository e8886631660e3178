"""The default date is today in Korea whatever the process time zone, and a missed night is caught up.

The process runs in UTC (as on Railway) with the clock moved by time-machine: 13:00 UTC is 22:00 KST
the same day (the scheduled run); 15:30 UTC is 00:30 KST the next day (a late or missed run).
"""

import datetime as dt
import os
import time

import pytest
import time_machine

from core.models import NightlyRun
from core.nightly.dates import NightlyTarget, nightly_lock_dates, nightly_targets
from tests.factories import users_create_many
from tests.nightly.helpers import fortune_map, run_batch

pytestmark = pytest.mark.django_db
UTC = dt.UTC
DAY = dt.date(2030, 3, 10)
SCHEDULED = dt.datetime(2030, 3, 10, 13, 0, tzinfo=UTC)  # 22:00 KST on 3/10
AFTER_MIDNIGHT = dt.datetime(2030, 3, 10, 15, 30, tzinfo=UTC)  # 00:30 KST on 3/11


@pytest.fixture
def utc_process():
    previous = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = previous
        time.tzset()


def _succeeded(target_date: dt.date) -> NightlyRun:
    return NightlyRun.objects.create(base_date=target_date - dt.timedelta(days=1), target_date=target_date,
                                   status=NightlyRun.Status.SUCCEEDED)


def test_scheduled_run_targets_the_next_kst_day(utc_process):
    _succeeded(DAY)
    with time_machine.travel(SCHEDULED, tick=False):
        assert dt.date.today() == DAY  # noqa: DTZ011 - the UTC date, which the batch must not use
        assert nightly_targets(base_date=None) == [NightlyTarget(base_date=DAY, target_date=DAY + dt.timedelta(days=1))]


def test_after_kst_midnight_the_base_date_is_the_kst_date_not_the_utc_date(utc_process):
    _succeeded(DAY)
    with time_machine.travel(AFTER_MIDNIGHT, tick=False):
        assert dt.date.today() == DAY  # noqa: DTZ011 - still 3/10 in UTC
        next_day = DAY + dt.timedelta(days=1)
        assert nightly_targets(base_date=None) == [
            NightlyTarget(base_date=DAY, target_date=next_day, catch_up=True),
            NightlyTarget(base_date=next_day, target_date=next_day + dt.timedelta(days=1)),
        ]


def test_a_partial_run_or_a_single_user_run_does_not_count_as_done(utc_process):
    NightlyRun.objects.create(base_date=DAY, target_date=DAY, status=NightlyRun.Status.PARTIAL)
    NightlyRun.objects.create(base_date=DAY, target_date=DAY, status=NightlyRun.Status.SUCCEEDED, user_id_filter=1)
    with time_machine.travel(SCHEDULED, tick=False):
        assert [t.catch_up for t in nightly_targets(base_date=None)] == [True, False]


def test_explicit_date_never_catches_up(utc_process):
    with time_machine.travel(AFTER_MIDNIGHT, tick=False):
        assert nightly_targets(base_date=DAY) == [NightlyTarget(base_date=DAY, target_date=DAY + dt.timedelta(days=1))]


def test_the_command_fills_a_missed_night_then_tomorrow(utc_process):
    users = users_create_many(count=5, seed=8)
    _succeeded(DAY)  # 3/10 was covered; the 13:00 UTC run for 3/11 never happened
    with time_machine.travel(AFTER_MIDNIGHT, tick=False):
        out = run_batch()
    today, tomorrow = DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)
    assert set(fortune_map(for_date=today)) == set(fortune_map(for_date=tomorrow)) == {u.pk for u in users}
    catch_up, regular = NightlyRun.objects.exclude(target_date=DAY).order_by("pk")
    assert (catch_up.target_date, catch_up.catch_up, catch_up.status) == (today, True, "succeeded")
    assert "catch-up" in catch_up.notes
    assert (regular.target_date, regular.catch_up, regular.status) == (tomorrow, False, "succeeded")
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"nightly run {today} (catch-up): succeeded")
    assert lines[-1].startswith(f"nightly run {tomorrow}: succeeded")


def test_the_command_at_the_scheduled_time_makes_only_tomorrow(utc_process):
    users = users_create_many(count=3, seed=8)
    _succeeded(DAY)
    with time_machine.travel(SCHEDULED, tick=False):
        run_batch()
    assert set(fortune_map(for_date=DAY + dt.timedelta(days=1))) == {u.pk for u in users}
    assert not fortune_map(for_date=DAY)
    assert NightlyRun.objects.filter(catch_up=True).count() == 0


@pytest.mark.usefixtures("utc_process")
def test_a_day_ahead_run_also_locks_the_day_it_submits():
    assert nightly_lock_dates(base_date=DAY) == [DAY + dt.timedelta(days=1)]
    assert nightly_lock_dates(base_date=DAY, ahead=True) == [DAY + dt.timedelta(days=1), DAY + dt.timedelta(days=2)]
    with time_machine.travel(AFTER_MIDNIGHT, tick=False):  # today in Korea is 3/11
        today = DAY + dt.timedelta(days=1)
        assert nightly_lock_dates(base_date=None, ahead=True) == [today + dt.timedelta(days=n) for n in range(3)]

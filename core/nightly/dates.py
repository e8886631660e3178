"""Which dates a nightly run fills: the base date is today in Korea, whatever the process time zone."""

import datetime as dt
from dataclasses import dataclass

from django.db import connection
from django.utils import timezone

from core.models import NightlyRun


@dataclass(frozen=True, slots=True)
class NightlyTarget:
    base_date: dt.date
    target_date: dt.date
    catch_up: bool = False


def nightly_today() -> dt.date:
    # TIME_ZONE is Asia/Seoul: Railway's cron fires at 13:00 UTC, which is already 22:00 KST.
    return timezone.localdate()


def database_today() -> dt.date:
    """Today in Korea by the database's clock. Retention counts from it: never from a run's --date
    (a typo a year ahead would prune everything) nor from a worker whose clock runs ahead."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT CURRENT_TIMESTAMP")
        (now,) = cursor.fetchone()
    if isinstance(now, str):  # SQLite answers UTC text, 'YYYY-MM-DD HH:MM:SS'
        now = dt.datetime.fromisoformat(now)
    if timezone.is_naive(now):
        now = now.replace(tzinfo=dt.UTC)
    return timezone.localdate(now)


def nightly_lock_dates(*, base_date: dt.date | None, ahead: bool = False) -> list[dt.date]:
    """Every target date a run with this base date may touch, so all of them are locked up front
    (ahead: the day after tomorrow too, which the run submits to the Batch API)."""
    extra = [(base_date or nightly_today()) + dt.timedelta(days=2)] if ahead else []
    if base_date is not None:
        return [base_date + dt.timedelta(days=1), *extra]
    today = nightly_today()
    return [today, today + dt.timedelta(days=1), *extra]


def nightly_targets(*, base_date: dt.date | None, catch_up_allowed: bool = True) -> list[NightlyTarget]:
    """The runs to make, in order.

    With an explicit base date: that date + 1 only. With the default date: tomorrow (KST), preceded
    by a catch-up run for today when no full run for today ever succeeded (a missed night, or a run
    that starts after KST midnight).
    """
    if base_date is not None:
        return [NightlyTarget(base_date=base_date, target_date=base_date + dt.timedelta(days=1))]
    today = nightly_today()
    tomorrow = NightlyTarget(base_date=today, target_date=today + dt.timedelta(days=1))
    if not catch_up_allowed:
        return [tomorrow]
    today_done = NightlyRun.objects.filter(
        target_date=today, status=NightlyRun.Status.SUCCEEDED, user_id_filter__isnull=True
    ).exists()
    if today_done:
        return [tomorrow]
    return [NightlyTarget(base_date=today - dt.timedelta(days=1), target_date=today, catch_up=True), tomorrow]

import datetime as dt
from io import StringIO
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.core.management import CommandError, call_command

from core.management.commands.prune_fortunes import BATCH_SIZE_TOO_SMALL, DAYS_TOO_LARGE, DAYS_TOO_SMALL
from core.models import FortuneGeneration, FortuneResult
from core.nightly.dates import database_today
from tests.factories import user_create

pytestmark = pytest.mark.django_db

# The process clock is moved a year ahead (a worker whose clock is wrong, 00:30 in Seoul): "today"
# is still the database's, in Korea.
NOW = dt.datetime(2030, 6, 1, 0, 30, tzinfo=ZoneInfo("Asia/Seoul"))
_hashes = iter(range(10**6))


def fortune(user, for_date: dt.date) -> FortuneResult:
    gen = FortuneGeneration.objects.create(
        input_hash=f"{next(_hashes):064x}", for_date=for_date, content={}, provider="local"
    )
    return FortuneResult.objects.create(user=user, for_date=for_date, generation=gen, source="batch")


@pytest.fixture
def fortunes():
    user = user_create(birth_date_solar=None)
    today = database_today()
    # And the process clock's "today", a year and more ahead: nothing there is older than the window.
    fortune(user, NOW.date() - dt.timedelta(days=30))
    return {
        days: fortune(user, today - dt.timedelta(days=days)) for days in (0, 9, 10, 11, 30)
    }


def prune(*args) -> str:
    out = StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("prune_fortunes", *args, stdout=out)
    return out.getvalue()


@pytest.mark.parametrize("days", ["0", "-1"])
def test_days_under_one_is_a_usage_error_that_deletes_nothing(fortunes, days):
    with pytest.raises(CommandError) as caught:
        prune("--days", days)
    assert str(caught.value) == DAYS_TOO_SMALL.format(days=int(days))
    assert FortuneResult.objects.count() == 6


@pytest.mark.parametrize("days", ["36501", "99999999999"])
def test_days_past_a_century_is_refused_rather_than_overflowing(fortunes, days):
    with pytest.raises(CommandError) as caught:
        prune("--days", days)
    assert str(caught.value) == DAYS_TOO_LARGE.format(days=int(days))
    assert FortuneResult.objects.count() == 6


def test_batch_size_under_one_is_refused(fortunes):
    with pytest.raises(CommandError) as caught:
        prune("--batch-size", "0")
    assert str(caught.value) == BATCH_SIZE_TOO_SMALL.format(batch_size=0)


def test_deletes_fortunes_older_than_the_databases_korean_today_minus_days(fortunes):
    out = prune("--days", "10")
    assert out.strip() == "Deleted 2 fortune results older than 10 days."
    today = database_today()
    kept = sorted((today - r.for_date).days for r in FortuneResult.objects.all())
    ahead = (today - (NOW.date() - dt.timedelta(days=30))).days  # still ahead by the database's clock
    assert kept == sorted([ahead, 0, 9, 10])
    assert FortuneGeneration.objects.count() == 4


def test_days_defaults_to_the_retention_setting(fortunes, settings):
    settings.FORTUNE_RETENTION_DAYS = 9
    assert prune().strip() == "Deleted 3 fortune results older than 9 days."
    assert FortuneResult.objects.count() == 3


def test_dry_run_prints_counts_and_deletes_nothing(fortunes):
    out = prune("--days", "10", "--dry-run")
    cutoff = database_today() - dt.timedelta(days=10)
    assert out.strip() == (
        f"Dry run: would delete 2 fortune results and 2 generations dated before {cutoff} (keeping 10 days)."
    )
    assert FortuneResult.objects.count() == 6
    assert FortuneGeneration.objects.count() == 6

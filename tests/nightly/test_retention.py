import datetime as dt
import logging

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from core.models import FortuneGeneration, FortuneResult
from core.nightly.dates import database_today
from core.nightly.retention import (
    BATCH_SIZE_INVALID,
    RETENTION_DAYS_INVALID,
    fortunes_prune,
    fortunes_prune_count,
    retention_cutoff,
)
from tests.factories import user_create

pytestmark = pytest.mark.django_db

TODAY = dt.date(2030, 6, 1)
CUTOFF = dt.date(2030, 3, 3)  # TODAY - 90 days: kept; the day before it is pruned
_hashes = iter(range(10**6))


def generation(for_date: dt.date) -> FortuneGeneration:
    return FortuneGeneration.objects.create(
        input_hash=f"{next(_hashes):064x}", for_date=for_date, content={"summary": "."}, provider="local"
    )


def result(user, gen: FortuneGeneration, for_date: dt.date | None = None) -> FortuneResult:
    return FortuneResult.objects.create(
        user=user, for_date=for_date or gen.for_date, generation=gen, source=FortuneResult.Source.BATCH
    )


@pytest.fixture
def users():
    return [user_create(birth_date_solar=None) for _ in range(3)]


def test_cutoff_keeps_exactly_retention_days():
    assert retention_cutoff(today=TODAY, retention_days=90) == CUTOFF
    assert retention_cutoff(today=TODAY, retention_days=1) == dt.date(2030, 5, 31)


@pytest.mark.parametrize("days", [0, -3, 36_501])
def test_a_retention_under_one_day_is_refused(days):
    with pytest.raises(ValueError, match=RETENTION_DAYS_INVALID.format(days=days)):
        fortunes_prune(today=TODAY, retention_days=days)


def test_a_batch_size_under_one_is_refused():
    with pytest.raises(ValueError, match=BATCH_SIZE_INVALID.format(batch_size=0)):
        fortunes_prune(today=TODAY, retention_days=90, batch_size=0)


def test_old_results_are_deleted_and_recent_ones_kept(users):
    a, b, c = users
    old = generation(CUTOFF - dt.timedelta(days=1))
    edge = generation(CUTOFF)
    recent = generation(TODAY)
    result(a, old)
    result(b, old)  # a shared, old generation
    result(a, edge)
    result(b, recent)
    result(c, recent)

    assert fortunes_prune(today=TODAY, retention_days=90) == 2

    assert sorted(FortuneResult.objects.values_list("user_id", "for_date")) == sorted(
        [(a.pk, CUTOFF), (b.pk, TODAY), (c.pk, TODAY)]
    )
    assert set(FortuneGeneration.objects.values_list("pk", flat=True)) == {edge.pk, recent.pk}


def test_an_old_generation_still_referenced_by_a_kept_result_is_kept(users):
    a, b, _ = users
    shared = generation(CUTOFF - dt.timedelta(days=10))
    result(a, shared)
    result(b, shared, for_date=TODAY)  # reused by a result inside the window
    assert fortunes_prune(today=TODAY, retention_days=90) == 1
    assert FortuneGeneration.objects.filter(pk=shared.pk).exists()
    assert list(FortuneResult.objects.values_list("user_id", flat=True)) == [b.pk]


def test_unreferenced_generations_are_pruned_only_once_old(users):
    orphan_old = generation(CUTOFF - dt.timedelta(days=1))  # e.g. left behind by --force long ago
    orphan_recent = generation(TODAY - dt.timedelta(days=2))
    assert fortunes_prune(today=TODAY, retention_days=90) == 0
    assert not FortuneGeneration.objects.filter(pk=orphan_old.pk).exists()
    assert FortuneGeneration.objects.filter(pk=orphan_recent.pk).exists()


def test_deletes_in_batches_each_bounded_by_batch_size(users):
    for days_before in range(1, 8):
        gen = generation(CUTOFF - dt.timedelta(days=days_before))
        for user in users:
            result(user, gen)
    keep = result(users[0], generation(TODAY))
    with CaptureQueriesContext(connection) as queries:
        assert fortunes_prune(today=TODAY, retention_days=90, batch_size=5) == 21
    result_deletes = [q["sql"] for q in queries if q["sql"].startswith("DELETE") and "fortuneresult" in q["sql"]]
    assert len(result_deletes) == 5  # 21 rows, 5 per batch
    assert list(FortuneResult.objects.values_list("pk", flat=True)) == [keep.pk]
    assert FortuneGeneration.objects.count() == 1


def test_dry_run_counts_match_what_is_pruned(users):
    a, b, _ = users
    old = generation(CUTOFF - dt.timedelta(days=1))
    result(a, old)
    result(b, old)
    generation(CUTOFF - dt.timedelta(days=30))  # orphan
    result(a, generation(TODAY))
    counts = fortunes_prune_count(today=TODAY, retention_days=90)
    assert (counts.cutoff, counts.results, counts.generations) == (CUTOFF, 2, 2)
    assert FortuneResult.objects.count() == 3  # counting deletes nothing
    assert fortunes_prune(today=TODAY, retention_days=90) == 2
    assert FortuneGeneration.objects.count() == 1


def test_prune_logs_a_fortune_line(users, caplog):
    logger = logging.getLogger("fortuna")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="fortuna.nightly")
    try:
        result(users[0], generation(CUTOFF - dt.timedelta(days=1)))
        fortunes_prune(today=TODAY, retention_days=90)
    finally:
        logger.removeHandler(caplog.handler)
    assert "fortune prune: deleted 1 results and 1 generations dated before 2030-03-03 (retention 90 days)" in [
        r.getMessage() for r in caplog.records
    ]


def test_dates_a_run_has_just_written_are_kept_whatever_their_age(users):
    a, b, _ = users
    written = CUTOFF - dt.timedelta(days=40)  # a backfill of an old date
    result(a, generation(written))
    result(b, generation(CUTOFF - dt.timedelta(days=1)))
    assert fortunes_prune_count(today=TODAY, retention_days=90, keep_dates=[written]).results == 1
    assert fortunes_prune(today=TODAY, retention_days=90, keep_dates=[written]) == 1
    assert list(FortuneResult.objects.values_list("for_date", flat=True)) == [written]
    assert list(FortuneGeneration.objects.values_list("for_date", flat=True)) == [written]


def test_database_today_is_the_korean_date_of_the_database_clock():
    real = timezone.localdate()
    with time_machine.travel(dt.datetime(2031, 1, 1, tzinfo=dt.UTC), tick=False):
        assert database_today() in {real, real + dt.timedelta(days=1)}  # the process clock is not asked

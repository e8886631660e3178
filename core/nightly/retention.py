"""Retention: fortunes older than the retention window are deleted in batches, then the generations
no result refers to any more. The window counts back from today by the database's clock
(core.nightly.dates.database_today); callers pass it in, never a run's own date."""

import datetime as dt
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q, QuerySet

from core.models import FortuneGeneration, FortuneResult

logger = logging.getLogger("fortuna.nightly")

MAX_RETENTION_DAYS = 36_500  # a century: beyond it the cutoff date itself stops being representable
RETENTION_DAYS_INVALID = f"The retention must be between 1 and {MAX_RETENTION_DAYS} days, got {{days}}."
BATCH_SIZE_INVALID = "The prune batch size must be at least 1, got {batch_size}."


@dataclass(frozen=True)
class PruneCounts:
    cutoff: dt.date
    results: int
    generations: int


def retention_cutoff(*, today: dt.date, retention_days: int) -> dt.date:
    """Rows with for_date before this date are pruned (today - retention_days is kept)."""
    if not 1 <= retention_days <= MAX_RETENTION_DAYS:
        raise ValueError(RETENTION_DAYS_INVALID.format(days=retention_days))
    return today - dt.timedelta(days=retention_days)


def _old_results(cutoff: dt.date, keep: tuple[dt.date, ...] = ()) -> QuerySet[FortuneResult]:
    return FortuneResult.objects.filter(for_date__lt=cutoff).exclude(for_date__in=keep)


def _orphan_generations(
    cutoff: dt.date, *, kept_results: QuerySet[FortuneResult], keep: tuple[dt.date, ...] = ()
) -> QuerySet[FortuneGeneration]:
    return FortuneGeneration.objects.filter(for_date__lt=cutoff).exclude(for_date__in=keep).exclude(
        Exists(kept_results.filter(generation=OuterRef("pk")))
    )


def fortunes_prune_count(*, today: dt.date, retention_days: int, keep_dates: Iterable[dt.date] = ()) -> PruneCounts:
    """What fortunes_prune would delete now (for --dry-run)."""
    cutoff = retention_cutoff(today=today, retention_days=retention_days)
    keep = tuple(keep_dates)
    kept = FortuneResult.objects.filter(Q(for_date__gte=cutoff) | Q(for_date__in=keep))
    return PruneCounts(
        cutoff=cutoff,
        results=_old_results(cutoff, keep).count(),
        generations=_orphan_generations(cutoff, kept_results=kept, keep=keep).count(),
    )


def _nightly_upper_pk(queryset: QuerySet, batch_size: int) -> int | None:
    """The pk bounding the next batch: a range keeps each DELETE's parameter count constant."""
    ordered = queryset.order_by("pk").values_list("pk", flat=True)
    upper = ordered[batch_size - 1 : batch_size].first()
    if upper is None:
        upper = queryset.aggregate(upper=Max("pk"))["upper"]
    return upper


def fortunes_prune(
    *, today: dt.date, retention_days: int, batch_size: int = 5000, keep_dates: Iterable[dt.date] = ()
) -> int:
    """Delete FortuneResult rows with for_date < today - retention_days, batch_size rows per
    transaction, then the older generations no result refers to. Returns the results deleted.

    keep_dates are never pruned: a run that has just written an old date (a deliberate backfill)
    does not delete it again in its own clean-up."""
    cutoff = retention_cutoff(today=today, retention_days=retention_days)
    keep = tuple(keep_dates)
    if batch_size < 1:
        raise ValueError(BATCH_SIZE_INVALID.format(batch_size=batch_size))

    results_deleted = 0
    while (upper := _nightly_upper_pk(_old_results(cutoff, keep), batch_size)) is not None:
        with transaction.atomic():
            deleted, _ = _old_results(cutoff, keep).filter(pk__lte=upper).delete()
        results_deleted += deleted

    generations_deleted = 0
    all_results = FortuneResult.objects.all()
    # Most nights nothing is old enough: the for_date index answers that at once, where the pk-ordered
    # orphan scan below would walk every generation.
    has_old = FortuneGeneration.objects.filter(for_date__lt=cutoff).exclude(for_date__in=keep).exists()
    orphans = _orphan_generations(cutoff, kept_results=all_results, keep=keep)
    while has_old and (upper := _nightly_upper_pk(orphans, batch_size)) is not None:
        with transaction.atomic():
            # Django's PROTECT check runs again inside this transaction; nothing links a new
            # result to a generation dated before the cutoff (runs write today and later).
            batch = _orphan_generations(cutoff, kept_results=all_results, keep=keep).filter(pk__lte=upper).only("pk")
            deleted, _ = batch.delete()
        generations_deleted += deleted

    logger.info(
        "fortune prune: deleted %d results and %d generations dated before %s (retention %d days)",
        results_deleted,
        generations_deleted,
        cutoff.isoformat(),
        retention_days,
    )
    return results_deleted

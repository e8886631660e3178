"""Retention: fortunes older than the retention window are deleted in batches, then the generations
no result refers to any more."""

import datetime as dt
import logging
from dataclasses import dataclass

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, QuerySet

from core.models import FortuneGeneration, FortuneResult

logger = logging.getLogger("fortuna.batch")

RETENTION_DAYS_INVALID = "The retention must be at least 1 day, got {days}."
BATCH_SIZE_INVALID = "The prune batch size must be at least 1, got {batch_size}."


@dataclass(frozen=True)
class PruneCounts:
    cutoff: dt.date
    results: int
    generations: int


def retention_cutoff(*, today: dt.date, retention_days: int) -> dt.date:
    """Rows with for_date before this date are pruned (today - retention_days is kept)."""
    if retention_days < 1:
        raise ValueError(RETENTION_DAYS_INVALID.format(days=retention_days))
    return today - dt.timedelta(days=retention_days)


def _old_results(cutoff: dt.date) -> QuerySet[FortuneResult]:
    return FortuneResult.objects.filter(for_date__lt=cutoff)


def _orphan_generations(cutoff: dt.date, *, kept_results: QuerySet[FortuneResult]) -> QuerySet[FortuneGeneration]:
    return FortuneGeneration.objects.filter(for_date__lt=cutoff).exclude(
        Exists(kept_results.filter(generation=OuterRef("pk")))
    )


def fortunes_prune_count(*, today: dt.date, retention_days: int) -> PruneCounts:
    """What fortunes_prune would delete now (for --dry-run)."""
    cutoff = retention_cutoff(today=today, retention_days=retention_days)
    kept = FortuneResult.objects.filter(for_date__gte=cutoff)
    return PruneCounts(
        cutoff=cutoff,
        results=_old_results(cutoff).count(),
        generations=_orphan_generations(cutoff, kept_results=kept).count(),
    )


def _batch_upper_pk(queryset: QuerySet, batch_size: int) -> int | None:
    """The pk bounding the next batch: a range keeps each DELETE's parameter count constant."""
    ordered = queryset.order_by("pk").values_list("pk", flat=True)
    upper = ordered[batch_size - 1 : batch_size].first()
    if upper is None:
        upper = queryset.aggregate(upper=Max("pk"))["upper"]
    return upper


def fortunes_prune(*, today: dt.date, retention_days: int, batch_size: int = 5000) -> int:
    """Delete FortuneResult rows with for_date < today - retention_days, batch_size rows per
    transaction, then the older generations no result refers to. Returns the results deleted."""
    cutoff = retention_cutoff(today=today, retention_days=retention_days)
    if batch_size < 1:
        raise ValueError(BATCH_SIZE_INVALID.format(batch_size=batch_size))

    results_deleted = 0
    while (upper := _batch_upper_pk(_old_results(cutoff), batch_size)) is not None:
        with transaction.atomic():
            deleted, _ = _old_results(cutoff).filter(pk__lte=upper).delete()
        results_deleted += deleted

    generations_deleted = 0
    all_results = FortuneResult.objects.all()
    # Most nights nothing is old enough: the for_date index answers that at once, where the pk-ordered
    # orphan scan below would walk every generation.
    has_old = FortuneGeneration.objects.filter(for_date__lt=cutoff).exists()
    orphans = _orphan_generations(cutoff, kept_results=all_results)
    while has_old and (upper := _batch_upper_pk(orphans, batch_size)) is not None:
        with transaction.atomic():
            # Django's PROTECT check runs again inside this transaction; nothing links a new
            # result to a generation dated before the cutoff (runs write today and later).
            batch = _orphan_generations(cutoff, kept_results=all_results).filter(pk__lte=upper).only("pk")
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

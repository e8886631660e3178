"""Natal pillars in the database: the settings-bound derivation, the stale-row selector, the bulk refresh."""

import datetime as dt
import logging

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, QuerySet

from core import natal
from core.models import User, chart_options

logger = logging.getLogger("fortuna.natal")


def natal_version() -> int:
    """The version stored pillars carry under this deployment's chart options."""
    return natal.pillars_version(options=chart_options())


def natal_fields(*, birth_date: dt.date | None, birth_time: dt.time | None) -> dict[str, object]:
    """The stored natal fields for this birth data; ValidationError (on birth_date_solar) if unchartable."""
    try:
        return natal.pillars_fields(birth_date=birth_date, birth_time=birth_time, options=chart_options())
    except natal.BirthDataInvalid as exc:
        raise ValidationError({exc.field: exc.message}) from None


def user_list_natal_stale() -> QuerySet[User]:
    """Users with a birth date whose stored pillars are missing or were computed from other data.

    Finds rows written around save(): bulk_create, queryset.update(), raw SQL, fixtures.
    """
    time_differs = (
        Q(birth_time__isnull=True, natal_birth_time__isnull=False)
        | Q(birth_time__isnull=False, natal_birth_time__isnull=True)
        | (Q(birth_time__isnull=False, natal_birth_time__isnull=False) & ~Q(birth_time=F("natal_birth_time")))
    )
    return User.objects.filter(birth_date_solar__isnull=False).filter(
        Q(natal_birth_date__isnull=True)
        | ~Q(natal_birth_date=F("birth_date_solar"))
        | Q(natal_version__isnull=True)
        | ~Q(natal_version=natal_version())
        | Q(saju_day="")
        | time_differs
    )


def users_refresh_natal(*, batch_size: int = 2000) -> int:
    """Recompute the stored pillars of every stale user, in keyset pages. Returns how many changed."""
    options = chart_options()
    refreshed = 0
    last_pk = 0
    while True:
        page = list(
            user_list_natal_stale()
            .filter(pk__gt=last_pk)
            .order_by("pk")
            .only("pk", "birth_date_solar", "birth_time")[:batch_size]
        )
        if not page:
            return refreshed
        for user in page:
            try:
                fields = natal.pillars_fields(birth_date=user.birth_date_solar, birth_time=user.birth_time,
                                              options=options)
            except natal.BirthDataInvalid as exc:
                # Written around validation (e.g. a bulk import of a date past 2100): no pillars, so
                # the batch reports the user as failed instead of using pillars of other data.
                logger.warning("fortune natal refresh: user %s has unchartable birth data: %s", user.pk,
                               exc.message)
                fields = natal.pillars_fields(birth_date=None, birth_time=None, options=options) | {
                    "natal_birth_date": user.birth_date_solar, "natal_birth_time": user.birth_time,
                }
            for name, value in fields.items():
                setattr(user, name, value)
        with transaction.atomic():
            User.objects.bulk_update(page, natal.NATAL_FIELDS, batch_size=batch_size)
        refreshed += len(page)
        last_pk = page[-1].pk
        logger.info("fortune natal refresh: %d users recomputed so far", refreshed)

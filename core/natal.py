"""Natal pillars stored on the user row: derivation on save, and the bulk refresh the batch runs."""

import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q, QuerySet

from core import saju

logger = logging.getLogger("fortuna.natal")

LUNAR_FIELDS = ("birth_lunar_year", "birth_lunar_month", "birth_lunar_day")
LUNAR_INCOMPLETE = "Give the lunar year, month and day together (or none of them)."
NATAL_FIELDS = (
    "saju_year", "saju_month", "saju_day", "saju_hour", "natal_birth_date", "natal_birth_time", "natal_version",
)


def chart_options() -> saju.ChartOptions:
    return saju.ChartOptions(zi_convention=settings.SAJU_ZI_CONVENTION, local_mean_time=settings.SAJU_LOCAL_MEAN_TIME)


def natal_version() -> int:
    """Changes whenever stored pillars would come out differently: engine version or chart options."""
    options = chart_options()
    return saju.ENGINE_VERSION * 100 + (10 if options.zi_convention == "yaja" else 0) + int(options.local_mean_time)


def natal_fields(*, birth_date, birth_time) -> dict:
    if birth_date is None:
        return dict.fromkeys(NATAL_FIELDS[:4], "") | {"natal_birth_date": None, "natal_birth_time": None,
                                                      "natal_version": natal_version()}
    try:
        chart = saju.natal_chart(birth_date=birth_date, birth_time=birth_time, options=chart_options())
    except saju.InvalidBirthData as exc:
        raise ValidationError({"birth_date_solar": str(exc)}) from None
    return {
        "saju_year": chart.year,
        "saju_month": chart.month,
        "saju_day": chart.day,
        "saju_hour": chart.hour or "",
        "natal_birth_date": birth_date,
        "natal_birth_time": birth_time,
        "natal_version": natal_version(),
    }


def user_apply_lunar_birth_date(*, user) -> bool:
    """Derive birth_date_solar from a lunar birth date when one was given. Returns True if it changed."""
    given = [getattr(user, name) for name in LUNAR_FIELDS]
    if all(value is None for value in given):
        return False
    if any(value is None for value in given):
        missing = next(name for name, value in zip(LUNAR_FIELDS, given, strict=True) if value is None)
        raise ValidationError({missing: LUNAR_INCOMPLETE})
    year, month, day = given
    try:
        solar = saju.lunar_to_solar(year=year, month=month, day=day, is_leap_month=user.birth_lunar_is_leap_month)
    except saju.InvalidBirthData as exc:
        raise ValidationError({"birth_lunar_day": str(exc)}) from None
    if solar == user.birth_date_solar:
        return False
    user.birth_date_solar = solar
    return True


def user_sync_natal(*, user) -> list[str]:
    """Bring the user's derived fields in step with its birth data; returns the names it changed."""
    changed = ["birth_date_solar"] if user_apply_lunar_birth_date(user=user) else []
    if (
        user.natal_version == natal_version()
        and user.natal_birth_date == user.birth_date_solar
        and user.natal_birth_time == user.birth_time
        and (user.birth_date_solar is None or user.saju_day)
    ):
        return changed
    for name, value in natal_fields(birth_date=user.birth_date_solar, birth_time=user.birth_time).items():
        setattr(user, name, value)
    return changed + list(NATAL_FIELDS)


def user_list_natal_stale() -> QuerySet:
    """Users with a birth date whose stored pillars are missing or were computed from other data.

    Finds rows written around save(): bulk_create, queryset.update(), raw SQL, fixtures.
    """
    from core.models import User

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
    from core.models import User

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
                fields = natal_fields(birth_date=user.birth_date_solar, birth_time=user.birth_time)
            except ValidationError as exc:
                # Written around validation (e.g. a bulk import of a date past 2100): no pillars, so
                # the batch reports the user as failed instead of using pillars of other data.
                logger.warning("fortune natal refresh: user %s has unchartable birth data: %s", user.pk,
                               "; ".join(exc.messages))
                fields = natal_fields(birth_date=None, birth_time=None) | {
                    "natal_birth_date": user.birth_date_solar, "natal_birth_time": user.birth_time,
                }
            for name, value in fields.items():
                setattr(user, name, value)
        with transaction.atomic():
            User.objects.bulk_update(page, NATAL_FIELDS, batch_size=batch_size)
        refreshed += len(page)
        last_pk = page[-1].pk
        logger.info("fortune natal refresh: %d users recomputed so far", refreshed)

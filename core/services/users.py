"""Accounts and birth data: registration, tokens, profile edits, deletion."""

import logging
from typing import Any

from django.contrib.auth import authenticate
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core import saju
from core.models import FortuneResult, User, user_apply_lunar_birth_date, user_sync_natal, validate_birth_date
from core.natal import LUNAR_FIELDS

logger = logging.getLogger("fortuna.accounts")

USERNAME_TAKEN = "This username is already taken."
EMAIL_TAKEN = "An account with this email address already exists."
INVALID_CREDENTIALS = "Unable to log in with the given username and password."
SOLAR_AND_LUNAR = "Give the birth date either as solar (birth_date_solar) or as lunar (birth_lunar_*), not both."
LUNAR_NO_LEAP_MONTH = "Lunar year {year} has no leap month {month} (윤{month}월)."
LUNAR_DATE_INVALID = "This lunar date does not exist: {detail}."

BIRTH_FIELDS = (
    "birth_date_solar", *LUNAR_FIELDS, "birth_lunar_is_leap_month", "birth_time", "gender",
)
# What a generation input depends on: a change makes today's and later fortunes stale.
FORTUNE_INPUT_FIELDS = ("birth_date_solar", "birth_time", "gender")


def user_apply_birth_data(*, user: User, data: dict[str, Any]) -> None:
    """Apply birth data (any subset of BIRTH_FIELDS) to an unsaved state of the user and validate it.

    A solar date replaces any lunar input; a lunar date (merged with the stored lunar fields) is
    converted to birth_date_solar. Raises ValidationError with field-named messages.
    """
    lunar_given = [name for name in (*LUNAR_FIELDS, "birth_lunar_is_leap_month") if name in data]
    if "birth_date_solar" in data and any(name in data for name in LUNAR_FIELDS):
        raise ValidationError({"birth_date_solar": SOLAR_AND_LUNAR})
    if "birth_date_solar" in data:
        if data["birth_date_solar"] is not None:
            try:
                validate_birth_date(data["birth_date_solar"])
            except ValidationError as exc:
                raise ValidationError({"birth_date_solar": exc.messages}) from None
        user.birth_date_solar = data["birth_date_solar"]
        for name in LUNAR_FIELDS:
            setattr(user, name, None)
        user.birth_lunar_is_leap_month = False
    for name in lunar_given:
        setattr(user, name, data[name])
    if "birth_time" in data:
        user.birth_time = data["birth_time"]
    if "gender" in data:
        user.gender = data["gender"]
    if any(getattr(user, name) is not None for name in LUNAR_FIELDS):
        _user_apply_lunar(user=user)
    elif user.birth_lunar_is_leap_month:
        user.birth_lunar_is_leap_month = False
    try:
        user_sync_natal(user=user)
    except ValidationError as exc:
        raise ValidationError(exc.message_dict) from None


def _user_apply_lunar(*, user: User) -> None:
    year, month, day = (getattr(user, name) for name in LUNAR_FIELDS)
    if user.birth_lunar_is_leap_month and None not in (year, month, day):
        try:
            saju.lunar_to_solar(year=year, month=month, day=day, is_leap_month=True)
        except saju.InvalidBirthData as exc:
            try:
                saju.lunar_to_solar(year=year, month=month, day=day, is_leap_month=False)
            except saju.InvalidBirthData:
                raise ValidationError({"birth_lunar_day": LUNAR_DATE_INVALID.format(detail=exc)}) from None
            raise ValidationError(
                {"birth_lunar_is_leap_month": LUNAR_NO_LEAP_MONTH.format(year=year, month=month)}
            ) from None
    try:
        user_apply_lunar_birth_date(user=user)
    except ValidationError as exc:
        messages = exc.message_dict
        if "birth_lunar_day" in messages and year is not None and month is not None and day is not None:
            detail = "; ".join(messages["birth_lunar_day"])
            raise ValidationError({"birth_lunar_day": LUNAR_DATE_INVALID.format(detail=detail)}) from None
        raise
    try:
        validate_birth_date(user.birth_date_solar)
    except ValidationError as exc:
        raise ValidationError({"birth_lunar_year": exc.messages}) from None


def _fortune_input_of(user: User) -> tuple:
    return tuple(getattr(user, name) for name in FORTUNE_INPUT_FIELDS)


def user_update_birth_data(*, user: User, data: dict[str, Any]) -> User:
    """Change the user's birth data; the natal pillars follow (save()), and fortunes for today
    and later, made from the old data, are deleted so the next request generates fresh ones."""
    before = _fortune_input_of(user)
    user_apply_birth_data(user=user, data=data)
    with transaction.atomic():
        user.save()
        if _fortune_input_of(user) != before:
            deleted, _ = FortuneResult.objects.filter(user=user, for_date__gte=timezone.localdate()).delete()
            logger.info("fortune profile change for user %s: %d fortunes from today on deleted", user.pk, deleted)
    return user


def user_register(*, username: str, email: str, password: str, birth_data: dict[str, Any]) -> tuple[User, Token]:
    """Create an account (and its API token). Raises ValidationError with field-named messages."""
    errors: dict[str, list[str]] = {}
    if User.objects.filter(username__iexact=username).exists():
        errors["username"] = [USERNAME_TAKEN]
    if User.objects.filter(email__iexact=email).exists():
        errors["email"] = [EMAIL_TAKEN]
    user = User(username=username, email=email)
    try:
        validate_password(password, user=user)
    except ValidationError as exc:
        errors["password"] = exc.messages
    if errors:
        raise ValidationError(errors)
    user_apply_birth_data(user=user, data=birth_data)
    user.set_password(password)
    try:
        with transaction.atomic():
            user.save()
            token = Token.objects.create(user=user)
    except IntegrityError:
        # A concurrent registration won the unique username.
        raise ValidationError({"username": USERNAME_TAKEN}) from None
    logger.info("account registered: user %s", user.pk)
    return user, token


def token_obtain(*, username: str, password: str, request=None) -> Token:
    user = authenticate(request, username=username, password=password)
    if user is None:  # wrong password, unknown user, or inactive (ModelBackend refuses those)
        raise ValidationError({"non_field_errors": INVALID_CREDENTIALS})
    token, _ = Token.objects.get_or_create(user=user)
    return token


def token_delete(*, user: User) -> None:
    Token.objects.filter(user=user).delete()


def user_delete(*, user: User) -> None:
    """Delete the account with its fortunes and token (birth data is personal data).

    Shared FortuneGeneration rows stay: they hold no identifier, only pillars and texts.
    """
    user_id = user.pk
    with transaction.atomic():
        FortuneResult.objects.filter(user=user).delete()
        user.delete()
    logger.info("account deleted: user %s", user_id)

"""One reader for every environment setting, with errors a person can act on."""

import datetime as dt
import os
import re
from decimal import Decimal, InvalidOperation
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_MISSING = object()


def _raw(name: str, default):
    value = os.environ.get(name)
    if value is None or (value.strip() == "" and default is not _MISSING):
        if default is _MISSING:
            raise ImproperlyConfigured(f"Set the environment variable {name} (see .env.example).")
        return None
    return value.strip()


def env(name: str, default=_MISSING) -> str:
    value = _raw(name, default)
    return default if value is None else value


def env_bool(name: str, default: bool = False) -> bool:
    value = _raw(name, default)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false (1/0, yes/no), got {value!r}.")


def env_int(name: str, default: int, *, min_value: int | None = None, max_value: int | None = None) -> int:
    value = _raw(name, default)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a whole number, got {value!r}.") from None
    if (min_value is not None and number < min_value) or (max_value is not None and number > max_value):
        if max_value is None:
            raise ImproperlyConfigured(f"{name} must be at least {min_value}, got {number}.")
        if min_value is None:
            raise ImproperlyConfigured(f"{name} must be at most {max_value}, got {number}.")
        raise ImproperlyConfigured(f"{name} must be between {min_value} and {max_value}, got {number}.")
    return number


def env_decimal(name: str, default: str, *, min_value: Decimal = Decimal(0)) -> Decimal:
    value = _raw(name, default)
    try:
        number = Decimal(default if value is None else value)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}.") from None
    if not number.is_finite() or number < min_value:
        raise ImproperlyConfigured(f"{name} must be a number ≥ {min_value}, got {value!r}.")
    return number


def env_list(name: str, default: str = "") -> list[str]:
    value = env(name, default)
    return [item.strip() for item in value.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env(name, default).lower()
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, got {value!r}.")
    return value


# DRF's throttle rate syntax (SimpleRateThrottle.parse_rate reads the period's first letter only).
_RATE = re.compile(r"[1-9][0-9]*/[smhd][a-z]*")


def env_rate(name: str, default: str) -> str:
    """A DRF throttle rate, checked here: DRF parses it only at a request, as a 500."""
    value = env(name, default)
    if not _RATE.fullmatch(value):
        raise ImproperlyConfigured(
            f"{name} must be a rate written COUNT/PERIOD, the period one of s, m, h or d (e.g. 60/min), got {value!r}."
        )
    return value


def env_clock_time(name: str, default: str) -> str:
    """A time of day written HH:MM (kept as text, the form its readers parse)."""
    value = env(name, default)
    try:
        if not re.fullmatch(r"[0-9]{2}:[0-9]{2}", value):
            raise ValueError(value)
        dt.time.fromisoformat(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a time of day written HH:MM (e.g. 23:30), got {value!r}.") from None
    return value


def env_url(name: str, default: str = "", *, schemes: tuple[str, ...] = ("http", "https")) -> str:
    """A URL with one of `schemes` and a host ("" when unset and the default is ""). The message never
    repeats the value: webhook and broker URLs carry secrets."""
    value = env(name, default)
    if not value:
        return value
    try:
        parts = urlsplit(value)
        scheme = parts.scheme
        has_host = bool(parts.hostname) or (scheme == "unix" and bool(parts.path))
    except ValueError:  # e.g. an unclosed [IPv6 bracket
        scheme, has_host = "", False
    if scheme not in schemes or not has_host:
        problem = f"its scheme is {scheme!r}" if scheme not in schemes else "it has no host"
        raise ImproperlyConfigured(
            f"{name} must be a {' or '.join(f'{s}://' for s in schemes)} URL with a host ({problem})."
        )
    return value


PRICE_TIERS = ("standard", "batch", "flex")
PRICE_ENTRY_INVALID = (
    "{name}: {entry!r} is not a price. Write entries as MODEL:TIER=INPUT/OUTPUT in USD per 1M tokens, "
    "comma-separated (e.g. gpt-4o-mini:batch=0.075/0.30); TIER is one of standard, batch, flex."
)


def env_prices(
    name: str, defaults: dict[str, dict[str, tuple[str, str]]]
) -> dict[str, dict[str, tuple[Decimal, Decimal]]]:
    """Prices per model and tier: the defaults, with the environment's MODEL:TIER=IN/OUT entries over them."""
    prices = {model: {tier: (Decimal(i), Decimal(o)) for tier, (i, o) in tiers.items()}
              for model, tiers in defaults.items()}
    for entry in env_list(name):
        try:
            key, value = entry.split("=", 1)
            model, tier = (part.strip() for part in key.rsplit(":", 1))
            price_in, price_out = (Decimal(part.strip()) for part in value.split("/"))
        except (ValueError, InvalidOperation):
            raise ImproperlyConfigured(PRICE_ENTRY_INVALID.format(name=name, entry=entry)) from None
        if (not model or tier not in PRICE_TIERS or not price_in.is_finite() or not price_out.is_finite()
                or price_in < 0 or price_out < 0):
            raise ImproperlyConfigured(PRICE_ENTRY_INVALID.format(name=name, entry=entry))
        prices.setdefault(model, {})[tier] = (price_in, price_out)
    return prices

"""The provider interface: a generation input in, fortune content out."""

import datetime as dt
import email.utils
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from core.fortunes.inputs import GenerationInput
from core.fortunes.schema import FortuneContent


class FailureReason(StrEnum):
    """ProviderError.reason values: short and stable, they are counted in NightlyRun.failure_sample and logs."""

    RATE_LIMITED = "rate_limited"          # 429
    QUOTA = "quota_exhausted"              # 429 whose Retry-After is beyond the cap, or insufficient_quota
    SERVER_ERROR = "server_error"          # 5xx
    TIMEOUT = "timeout"
    CONNECTION = "connection_error"
    INVALID_OUTPUT = "invalid_output"      # not valid JSON / not valid for the schema / refusal
    BAD_REQUEST = "bad_request"            # other 4xx: never retried
    CONFIG = "misconfigured"               # e.g. FORTUNE_PROVIDER=openai without OPENAI_API_KEY
    FLEX_UNAVAILABLE = "flex_unavailable"  # 429 "resource unavailable" on the flex tier: retry on default


# The 4xx answers a retry can fix, as the SDK's own retry rule has them: 408 (request timeout), 409
# (conflict) and 429 (rate limited). Any other 4xx fails the same way however often it is sent.
RETRYABLE_CLIENT_STATUSES = frozenset({408, 409, 429})


class ProviderError(Exception):
    def __init__(
        self, message: str, *, reason: FailureReason | str, retryable: bool, retry_after: float | None = None,
        status_code: int | None = None, headers: Mapping[str, str] | None = None,
        tokens_in: int = 0, tokens_out: int = 0, service_tier: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said
        self.status_code = status_code
        # The answer's rate-limit headers (retry-after*, x-ratelimit-*), lower-cased: core.limiter
        # learns the account's real limits from them.
        self.headers = dict(headers or {})
        # What the server billed for this failed answer (an invalid, truncated or refused one came
        # with its usage): counted in the run's tokens, cost and the limiter like a good answer's.
        self.tokens_in = tokens_in
        self.tokens_out = tokens_out
        self.service_tier = service_tier

    @property
    def billed(self) -> bool:
        return bool(self.tokens_in or self.tokens_out)

    @property
    def signature(self) -> str:
        """What two failures share when they fail "the same way" (core.nightly.guards' streak): the
        reason and the HTTP status, not the message (it carries request ids and validation details)."""
        return f"{self.reason}:{self.status_code}" if self.status_code else str(self.reason)


class ProviderConfigError(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason=FailureReason.CONFIG, retryable=False)


@dataclass(frozen=True, slots=True)
class Generated:
    content: FortuneContent
    tokens_in: int = 0
    tokens_out: int = 0
    service_tier: str = ""  # the tier the provider says it used ("flex", "default"); "" when it does not say


class Provider(Protocol):
    name: str   # "local" | "openai"
    model: str  # "" for local

    @property
    def generator(self) -> str:
        """provider:model — part of the generation input's hash."""

    def generate(self, inp: GenerationInput) -> Generated:
        """One attempt (one HTTP request for remote providers). Raises ProviderError."""


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms`, else `retry-after` (seconds or an HTTP date); None if absent.

    Pass a case-insensitive mapping (httpx2's Headers) or one with lower-case names.
    """
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())

"""The provider interface: a generation input in, fortune content out."""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from core.fortunes.inputs import GenerationInput
from core.fortunes.schema import FortuneContent

# ProviderError.reason values (short, stable: they are counted in BatchRun.failure_sample and reports)
REASON_RATE_LIMITED = "rate_limited"          # 429
REASON_QUOTA = "quota_exhausted"              # 429 whose Retry-After is beyond the cap
REASON_SERVER_ERROR = "server_error"          # 5xx
REASON_TIMEOUT = "timeout"
REASON_CONNECTION = "connection_error"
REASON_INVALID_OUTPUT = "invalid_output"      # not valid JSON / not valid for the schema / refusal
REASON_BAD_REQUEST = "bad_request"            # other 4xx: never retried
REASON_CONFIG = "misconfigured"               # e.g. FORTUNE_PROVIDER=openai without OPENAI_API_KEY


class ProviderError(Exception):
    def __init__(
        self, message: str, *, reason: str, retryable: bool, retry_after: float | None = None,
        status_code: int | None = None, headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said
        self.status_code = status_code
        # The answer's rate-limit headers (retry-after*, x-ratelimit-*), lower-cased: core.limiter
        # learns the account's real limits from them.
        self.headers = dict(headers or {})


class ProviderConfigError(ProviderError):
    def __init__(self, message: str) -> None:
        super().__init__(message, reason=REASON_CONFIG, retryable=False)


@dataclass(frozen=True, slots=True)
class Generated:
    content: FortuneContent
    tokens_in: int = 0
    tokens_out: int = 0


class Provider(Protocol):
    name: str   # "local" | "openai"
    model: str  # "" for local

    @property
    def generator(self) -> str:
        """provider:model — part of the generation input's hash."""

    def generate(self, inp: GenerationInput) -> Generated:
        """One attempt (one HTTP request for remote providers). Raises ProviderError."""

"""The `openai` provider: one Structured Outputs request per generate(), errors mapped to ProviderError.

Retries are the caller's job (the batch counts every HTTP attempt), so the SDK client is built with
max_retries=0 and one generate() is exactly one HTTP request.
"""

import datetime as dt
import email.utils
import functools
import logging
import threading
from collections.abc import Mapping

import openai
import pydantic
from django.conf import settings
from django.utils import timezone
from openai.lib._parsing._completions import type_to_response_format_param
from openai.types.chat import ChatCompletion

from core.fortunes.inputs import GenerationInput
from core.fortunes.prompt import build_messages
from core.fortunes.providers.base import (
    REASON_BAD_REQUEST,
    REASON_CONNECTION,
    REASON_INVALID_OUTPUT,
    REASON_QUOTA,
    REASON_RATE_LIMITED,
    REASON_SERVER_ERROR,
    REASON_TIMEOUT,
    Generated,
    ProviderConfigError,
    ProviderError,
)
from core.fortunes.schema import GeneratedPart

logger = logging.getLogger("fortuna.fortunes.openai")

OPENAI_KEY_MISSING = (
    "FORTUNE_PROVIDER=openai needs OPENAI_API_KEY. Set OPENAI_API_KEY (and OPENAI_BASE_URL for an "
    "OpenAI-compatible server), or set FORTUNE_PROVIDER=local to generate fortunes offline."
)
OPENAI_MODEL_MISSING = "FORTUNE_PROVIDER=openai needs OPENAI_MODEL (e.g. gpt-4o-mini)."
INVALID_OUTPUT_NOT_VALID = "model output is not valid for the fortune schema"
INVALID_OUTPUT_REFUSAL = "the model refused to answer"
INVALID_OUTPUT_TRUNCATED = "the model output was cut off (length limit)"
INVALID_OUTPUT_FILTERED = "the model output was blocked by the content filter"
INVALID_OUTPUT_EMPTY = "the model returned no parsed content"

CONNECT_TIMEOUT = 5.0  # seconds; a dead host should fail fast whatever the read timeout
# OpenAI answers 429 with this code when the account's quota or billing limit is exhausted: waiting
# a few seconds will not help.
QUOTA_ERROR_CODE = "insufficient_quota"

_clients: dict[tuple[str | None, str, float], openai.OpenAI] = {}
_clients_lock = threading.Lock()


def openai_client_get(*, base_url: str | None, api_key: str, timeout: float) -> openai.OpenAI:
    """One shared client (one connection pool) per configuration; the SDK client is thread-safe."""
    key = (base_url, api_key, float(timeout))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = openai.OpenAI(
                api_key=api_key,
                base_url=base_url,
                max_retries=0,
                timeout=openai.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            )
            _clients[key] = client
            logger.debug("fortune provider: new openai client for %s (timeout %g s)", base_url or "api.openai.com",
                         timeout)
        return client


def openai_clients_close() -> None:
    """Close every cached client's connections (a batch run must exit with none open).

    Call it at the end of a process or run: providers made before it keep their now-closed client.
    """
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms`, else `retry-after` (seconds or an HTTP date); None if absent."""
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
    return max(0.0, (when - timezone.now()).total_seconds())


def rate_limit_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The retry-after and x-ratelimit-* headers of an answer, lower-cased (for core.limiter)."""
    if headers is None:
        return {}
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith(("x-ratelimit-", "retry-after"))}


def _status_error(exc: openai.APIStatusError) -> ProviderError:
    status = exc.status_code
    message = f"HTTP {status}: {exc.message}"[:300]
    if status == 429:
        if exc.code == QUOTA_ERROR_CODE:
            return ProviderError(message, reason=REASON_QUOTA, retryable=False, status_code=status)
        return ProviderError(message, reason=REASON_RATE_LIMITED, retryable=True, status_code=status,
                             retry_after=retry_after_seconds(exc.response.headers),
                             headers=rate_limit_headers(exc.response.headers))
    if status >= 500:
        return ProviderError(message, reason=REASON_SERVER_ERROR, retryable=True, status_code=status,
                             retry_after=retry_after_seconds(exc.response.headers))
    return ProviderError(message, reason=REASON_BAD_REQUEST, retryable=False, status_code=status)


@functools.cache
def response_format() -> dict:
    """The strict json_schema response_format that `chat.completions.parse(response_format=GeneratedPart)`
    sends, built once. parse() rebuilds it on every call, which measured 4.7 ms of client CPU per
    request against 2.6 ms for create() with this dict: at 64 workers that is the difference between
    ~210 and ~380 requests/s per process on one core. The content is validated here with pydantic.
    """
    return type_to_response_format_param(GeneratedPart)


def chat_completion_create(client: openai.OpenAI, *, model: str, messages: list[dict]) -> ChatCompletion:
    """POST /chat/completions with the fortune's Structured Outputs format: one HTTP request.

    The request body is exactly what `chat.completions.create()` sends (a test pins it), posted
    through the SDK's documented `client.post()` for requests it needs no help typing: create() first
    walks the whole body against its TypedDicts (`maybe_transform`, a no-op for these plain fields),
    which was about 40% of the client CPU per request (~2.3 → ~1.4 ms, bench/batch.py). Errors,
    timeouts and headers are the SDK's own; the answer is still the SDK's typed ChatCompletion.
    """
    return client.post(
        "/chat/completions",
        cast_to=ChatCompletion,
        body={"model": model, "messages": messages, "response_format": response_format()},
    )


def _invalid(message: str) -> ProviderError:
    return ProviderError(message, reason=REASON_INVALID_OUTPUT, retryable=True)


class OpenAIProvider:
    name = "openai"

    def __init__(self, *, api_key: str, model: str, base_url: str | None, timeout: float) -> None:
        self.model = model
        self.timeout = timeout
        self._client = openai_client_get(base_url=base_url, api_key=api_key, timeout=timeout)

    @classmethod
    def from_settings(cls, timeout: float | None = None) -> "OpenAIProvider":
        if not settings.OPENAI_API_KEY:
            raise ProviderConfigError(OPENAI_KEY_MISSING)
        if not settings.OPENAI_MODEL:
            raise ProviderConfigError(OPENAI_MODEL_MISSING)
        return cls(
            api_key=settings.OPENAI_API_KEY,
            model=settings.OPENAI_MODEL,
            base_url=settings.OPENAI_BASE_URL or None,
            timeout=float(timeout or settings.OPENAI_TIMEOUT),
        )

    @property
    def generator(self) -> str:
        return f"openai:{self.model}"

    def generate(self, inp: GenerationInput) -> Generated:
        try:
            completion = chat_completion_create(self._client, model=self.model, messages=build_messages(inp))
        except openai.APITimeoutError as exc:
            raise ProviderError(f"timed out after {self.timeout:g} s", reason=REASON_TIMEOUT, retryable=True) from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ProviderError(f"connection failed: {cause}"[:300], reason=REASON_CONNECTION,
                                retryable=True) from exc
        except openai.APIStatusError as exc:
            raise _status_error(exc) from exc

        choice = completion.choices[0] if completion.choices else None
        if choice is None:
            raise _invalid(INVALID_OUTPUT_EMPTY)
        if choice.finish_reason == "length":
            raise _invalid(INVALID_OUTPUT_TRUNCATED)
        if choice.finish_reason == "content_filter":
            raise _invalid(INVALID_OUTPUT_FILTERED)
        if choice.message.refusal:
            raise _invalid(INVALID_OUTPUT_REFUSAL)
        if not choice.message.content:
            raise _invalid(INVALID_OUTPUT_EMPTY)
        try:
            part = GeneratedPart.model_validate_json(choice.message.content)
        except pydantic.ValidationError as exc:  # also what output that is not JSON at all raises
            first = exc.errors()[0]
            raise _invalid(f"{INVALID_OUTPUT_NOT_VALID}: {exc.error_count()} error(s), first: "
                           f"{'.'.join(map(str, first['loc']))} {first['msg']}"[:300]) from exc
        usage = completion.usage
        return Generated(
            content=inp.compose(part),
            tokens_in=usage.prompt_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
        )

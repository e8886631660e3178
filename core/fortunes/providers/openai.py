"""The `openai` provider: one Structured Outputs request per generate(), errors mapped to ProviderError.

Retries are the caller's job (the batch counts every HTTP attempt), so the SDK client is built with
max_retries=0 and one generate() is exactly one HTTP request.
"""

import functools
import logging
import threading
import time
from collections.abc import Mapping

import openai
import pydantic
from django.conf import settings
from openai.lib._parsing._completions import type_to_response_format_param
from openai.types.chat import ChatCompletion

from core.fortunes.inputs import GenerationInput
from core.fortunes.prompt import build_messages, output_token_cap
from core.fortunes.providers.base import (
    RETRYABLE_CLIENT_STATUSES,
    FailureReason,
    Generated,
    ProviderConfigError,
    ProviderError,
    retry_after_seconds,
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
# Flex processing answers 429 "Resource Unavailable" when it has no capacity (not billed).
FLEX_UNAVAILABLE_CODE = "resource_unavailable"
FLEX_UNAVAILABLE_TEXT = "resource unavailable"
# After flex ran out, requests go to the default tier this long before flex is tried again.
FLEX_PAUSE_SECONDS = 60.0

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
            return ProviderError(message, reason=FailureReason.QUOTA, retryable=False, status_code=status)
        if exc.code == FLEX_UNAVAILABLE_CODE or FLEX_UNAVAILABLE_TEXT in str(exc.message).lower():
            # The provider falls back to the default tier at once: retry without waiting.
            return ProviderError(message, reason=FailureReason.FLEX_UNAVAILABLE, retryable=True, status_code=status,
                                 retry_after=0.0)
        return ProviderError(message, reason=FailureReason.RATE_LIMITED, retryable=True, status_code=status,
                             retry_after=retry_after_seconds(exc.response.headers),
                             headers=rate_limit_headers(exc.response.headers))
    if status >= 500 or status in RETRYABLE_CLIENT_STATUSES:
        return ProviderError(message, reason=FailureReason.SERVER_ERROR, retryable=True, status_code=status,
                             retry_after=retry_after_seconds(exc.response.headers))
    return ProviderError(message, reason=FailureReason.BAD_REQUEST, retryable=False, status_code=status)


@functools.cache
def response_format() -> dict:
    """The strict json_schema response_format that `chat.completions.parse(response_format=GeneratedPart)`
    sends, built once. parse() rebuilds it on every call, which costs more client CPU per request than
    the whole call with this dict; with many workers per process that CPU, not the network, caps the
    requests per second (figures in docs/BENCHMARKS.md). The content is validated here with pydantic.
    """
    return type_to_response_format_param(GeneratedPart)


def chat_completion_body(*, model: str, messages: list[dict], service_tier: str | None = None) -> dict:
    """The Structured Outputs request body of one fortune: what the synchronous path posts and what a
    Batch API line carries (its `body`), with the output-token cap (output_token_cap()) in
    OPENAI_MAX_TOKENS_PARAM. service_tier is sent only when given (flex)."""
    body = {"model": model, "messages": messages, "response_format": response_format(),
            settings.OPENAI_MAX_TOKENS_PARAM: output_token_cap()}
    if service_tier:
        body["service_tier"] = service_tier
    return body


def chat_completion_create(
    client: openai.OpenAI, *, model: str, messages: list[dict], service_tier: str | None = None,
) -> ChatCompletion:
    """POST /chat/completions with the fortune's Structured Outputs format: one HTTP request.

    The request body is exactly what `chat.completions.create()` sends (a test pins it), posted
    through the SDK's documented `client.post()` for requests it needs no help typing: create() first
    walks the whole body against its TypedDicts (`maybe_transform`, a no-op for these plain fields),
    which cost a large share of the client CPU per request (bench/nightly.py). Errors, timeouts and
    headers are the SDK's own; the answer is still the SDK's typed ChatCompletion.
    """
    return client.post(
        "/chat/completions",
        cast_to=ChatCompletion,
        body=chat_completion_body(model=model, messages=messages, service_tier=service_tier),
    )


def completion_part(*, finish_reason: str | None, refusal: str | None, content: str | None) -> GeneratedPart:
    """The fortune a chat completion's first choice carries, validated; raises ProviderError
    (FailureReason.INVALID_OUTPUT). Shared by the synchronous path and the Batch API's output lines."""
    if finish_reason == "length":
        raise _invalid(INVALID_OUTPUT_TRUNCATED)
    if finish_reason == "content_filter":
        raise _invalid(INVALID_OUTPUT_FILTERED)
    if refusal:
        raise _invalid(INVALID_OUTPUT_REFUSAL)
    if not content:
        raise _invalid(INVALID_OUTPUT_EMPTY)
    try:
        return GeneratedPart.model_validate_json(content)
    except pydantic.ValidationError as exc:  # also what output that is not JSON at all raises
        first = exc.errors()[0]
        raise _invalid(f"{INVALID_OUTPUT_NOT_VALID}: {exc.error_count()} error(s), first: "
                       f"{'.'.join(map(str, first['loc']))} {first['msg']}"[:300]) from exc


def openai_flex_until(*, deadline: float | None) -> float | None:
    """When a batch with this deadline (time.monotonic()) stops asking for flex: None (never flex) unless
    OPENAI_SERVICE_TIER=flex; then FORTUNE_FLEX_FALLBACK_MINUTES before the deadline."""
    if deadline is None or settings.OPENAI_SERVICE_TIER != "flex":
        return None
    return deadline - settings.FORTUNE_FLEX_FALLBACK_MINUTES * 60


def _invalid(message: str) -> ProviderError:
    return ProviderError(message, reason=FailureReason.INVALID_OUTPUT, retryable=True)


class OpenAIProvider:
    name = "openai"

    def __init__(
        self, *, api_key: str, model: str, base_url: str | None, timeout: float, flex_until: float | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout
        # time.monotonic() until which requests ask for service_tier="flex"; None = never flex.
        self.flex_until = flex_until
        self._flex_paused_until = 0.0
        self._client = openai_client_get(base_url=base_url, api_key=api_key, timeout=timeout)

    @classmethod
    def from_settings(cls, timeout: float | None = None, flex_deadline: float | None = None) -> "OpenAIProvider":
        if not settings.OPENAI_API_KEY:
            raise ProviderConfigError(OPENAI_KEY_MISSING)
        if not settings.OPENAI_MODEL:
            raise ProviderConfigError(OPENAI_MODEL_MISSING)
        return cls(
            api_key=settings.OPENAI_API_KEY,
            model=settings.OPENAI_MODEL,
            base_url=settings.OPENAI_BASE_URL or None,
            timeout=float(timeout or settings.OPENAI_TIMEOUT),
            flex_until=openai_flex_until(deadline=flex_deadline),
        )

    def service_tier_now(self) -> str | None:
        """"flex" while flex is configured, before its cut-off and not paused after a 429; else None
        (the default tier)."""
        now = time.monotonic()
        if self.flex_until is None or now >= self.flex_until or now < self._flex_paused_until:
            return None
        return "flex"

    @property
    def generator(self) -> str:
        return f"openai:{self.model}"

    def generate(self, inp: GenerationInput) -> Generated:
        try:
            tier = self.service_tier_now()
            completion = chat_completion_create(self._client, model=self.model, messages=build_messages(inp),
                                                service_tier=tier)
        except openai.APITimeoutError as exc:
            raise ProviderError(
                f"timed out after {self.timeout:g} s", reason=FailureReason.TIMEOUT, retryable=True
            ) from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            raise ProviderError(f"connection failed: {cause}"[:300], reason=FailureReason.CONNECTION,
                                retryable=True) from exc
        except openai.APIStatusError as exc:
            error = _status_error(exc)
            if error.reason == FailureReason.FLEX_UNAVAILABLE:
                self._flex_paused_until = time.monotonic() + FLEX_PAUSE_SECONDS
                logger.info("flex tier unavailable: default tier for the next %g s", FLEX_PAUSE_SECONDS)
            raise error from exc

        usage = completion.usage
        tokens_in = usage.prompt_tokens if usage else 0
        tokens_out = usage.completion_tokens if usage else 0
        service_tier = completion.service_tier or ""
        try:
            choice = completion.choices[0] if completion.choices else None
            if choice is None:
                raise _invalid(INVALID_OUTPUT_EMPTY)
            part = completion_part(finish_reason=choice.finish_reason, refusal=choice.message.refusal,
                                   content=choice.message.content)
        except ProviderError as exc:
            # Billed all the same: the caller counts these tokens (cost, TPM) before retrying.
            exc.tokens_in, exc.tokens_out, exc.service_tier = tokens_in, tokens_out, service_tier
            raise
        return Generated(content=inp.compose(part), tokens_in=tokens_in, tokens_out=tokens_out,
                         service_tier=service_tier)

"""Flex processing on the batch's synchronous path, through the stub and the real SDK."""

import datetime as dt
import functools
import json
import threading
import time

import pytest

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import ProviderError, get_provider
from core.fortunes.providers.base import FailureReason
from core.limiter import RateLimiter
from core.resilience import RetryPolicy, call_with_retries

HOUR = 3600.0


@pytest.fixture
def inp() -> GenerationInput:
    return GenerationInput(for_date=dt.date(2025, 3, 1), year="癸亥", month="乙丑", day="戊辰", hour=None, gender="M",
                           generator="openai:gpt-4o-mini")


@pytest.fixture
def flex(openai_settings, settings):
    settings.OPENAI_SERVICE_TIER = "flex"
    settings.FORTUNE_FLEX_FALLBACK_MINUTES = 30
    return openai_settings


def _tiers(stub) -> list[str | None]:
    return [json.loads(r["body"]).get("service_tier") for r in stub.requests(bodies=True)]


def test_the_batch_asks_for_flex_and_is_billed_as_flex(flex, inp):
    generated = get_provider(name="openai", flex_deadline=time.monotonic() + HOUR).generate(inp)
    assert _tiers(flex) == ["flex"]
    assert generated.service_tier == "flex"


def test_the_on_demand_path_never_uses_flex(flex, inp):
    generated = get_provider(name="openai").generate(inp)  # no batch deadline: the web path
    assert _tiers(flex) == [None]
    assert generated.service_tier == "default"


def test_no_flex_in_the_last_fallback_minutes_before_the_deadline(flex, inp, settings):
    get_provider(name="openai", flex_deadline=time.monotonic() + 29 * 60).generate(inp)
    settings.FORTUNE_FLEX_FALLBACK_MINUTES = 0
    get_provider(name="openai", flex_deadline=time.monotonic() + 29 * 60).generate(inp)
    assert _tiers(flex) == [None, "flex"]


def test_default_tier_setting_never_asks_for_flex(openai_settings, settings, inp):
    settings.OPENAI_SERVICE_TIER = "default"
    get_provider(name="openai", flex_deadline=time.monotonic() + HOUR).generate(inp)
    assert _tiers(openai_settings) == [None]


def test_resource_unavailable_is_its_own_reason_and_the_retry_falls_back_to_default(flex, inp):
    flex.configure(fail_when_contains=["flex"], fail_status=429, fail_code="resource_unavailable")
    provider = get_provider(name="openai", flex_deadline=time.monotonic() + HOUR)
    with pytest.raises(ProviderError) as caught:
        provider.generate(inp)
    error = caught.value
    assert (error.reason, error.retryable, error.retry_after, error.status_code) == (
        FailureReason.FLEX_UNAVAILABLE, True, 0.0, 429)
    assert error.reason != FailureReason.RATE_LIMITED
    generated = provider.generate(inp)
    assert generated.service_tier == "default"
    assert _tiers(flex) == ["flex", None]


def test_through_the_retry_loop_one_generation_costs_one_flex_refusal_and_one_default_request(flex, inp):
    flex.configure(fail_when_contains=["flex"], fail_status=429, fail_code="resource_unavailable")
    provider = get_provider(name="openai", flex_deadline=time.monotonic() + HOUR)
    outcome = call_with_retries(functools.partial(provider.generate, inp),
                                policy=RetryPolicy(max_attempts=3, max_retry_after=60), limiter=RateLimiter(None),
                                stop=threading.Event())
    assert outcome.generated is not None and outcome.attempts == 2
    assert flex.counters()["by_status"] == {"429": 1, "200": 1}

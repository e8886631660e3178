"""The `openai` provider through the stub server process and the real SDK (the SDK is never patched)."""

import datetime as dt
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from core.fortunes.inputs import GenerationInput
from core.fortunes.prompt import build_messages, estimate_tokens, output_token_cap, schema_output_token_cap
from core.fortunes.providers import ProviderConfigError, ProviderError, get_provider
from core.fortunes.providers.base import FailureReason
from core.fortunes.providers.openai import INVALID_OUTPUT_TRUNCATED, OPENAI_KEY_MISSING, OpenAIProvider
from core.fortunes.schema import FortuneContent, GeneratedPart
from tests.factories import user_create
from tests.stub_openai.server import RUNAWAY_TOKENS, messages_sha256

FOR_DATE = dt.date(2025, 3, 1)


@pytest.fixture
def inp() -> GenerationInput:
    return GenerationInput(
        for_date=FOR_DATE, year="癸亥", month="乙丑", day="戊辰", hour="戊午", gender="F",
        generator="openai:gpt-4o-mini",
    )


@pytest.fixture
def provider(openai_settings) -> OpenAIProvider:
    return get_provider(name="openai")


def _error(provider: OpenAIProvider, inp: GenerationInput) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        provider.generate(inp)
    return caught.value


def test_valid_output_is_parsed_into_the_content_schema_with_the_computed_saju(provider, inp, openai_settings):
    generated = provider.generate(inp)

    assert isinstance(generated.content, FortuneContent)
    assert generated.content.for_date == FOR_DATE
    assert generated.content.saju == inp.saju_block()
    assert generated.content.saju.pillars.day == "戊辰"
    assert generated.tokens_in > 0 and generated.tokens_out > 0
    assert openai_settings.counters()["by_status"] == {"200": 1}


def test_provider_identity_follows_settings(openai_settings, settings):
    settings.OPENAI_MODEL = "gpt-4.1-mini"
    provider = get_provider(name="openai")
    assert (provider.name, provider.model, provider.generator) == ("openai", "gpt-4.1-mini", "openai:gpt-4.1-mini")


def test_the_request_body_is_what_the_sdks_parse_helper_sends(provider, inp, openai_settings):
    provider.generate(inp)
    client = openai.OpenAI(api_key="sk-test-stub", base_url=openai_settings.base_url, max_retries=0)
    client.chat.completions.parse(model=provider.model, messages=build_messages(inp), response_format=GeneratedPart,
                                  max_completion_tokens=output_token_cap())
    client.close()
    ours, sdk_parse = (json.loads(r["body"]) for r in openai_settings.requests(bodies=True))
    sdk_parse.pop("stream")  # parse() spells out the default
    assert ours == sdk_parse
    assert ours["response_format"]["json_schema"]["strict"] is True


# --- the model's own failure modes (issue 17.7) ---------------------------------------------------


def test_every_request_carries_the_output_cap_derived_from_the_schema(provider, inp, openai_settings):
    cap = output_token_cap()
    # The longest valid answer at one token per character: all the schema's maxLengths and more.
    assert cap == schema_output_token_cap() > 300 + 5 * 600 + 20 + 10 + 400
    provider.generate(inp)
    openai_settings.configure(fault_500=1.0)
    _error(provider, inp)
    assert openai_settings.counters()["by_output_cap"] == {str(cap): 2}


def test_the_cap_is_configurable_and_its_field_name_too(inp, openai_settings, settings):
    settings.FORTUNE_MAX_OUTPUT_TOKENS = 1500
    settings.OPENAI_MAX_TOKENS_PARAM = "max_tokens"
    get_provider(name="openai").generate(inp)
    [request] = openai_settings.requests(bodies=True)
    body = json.loads(request["body"])
    assert body["max_tokens"] == 1500 and "max_completion_tokens" not in body


def test_a_runaway_answer_stops_at_the_cap_and_its_tokens_are_still_counted(provider, inp, openai_settings):
    openai_settings.configure(faults={"runaway": 1.0})
    error = _error(provider, inp)
    assert (error.reason, error.retryable, str(error)) == (FailureReason.INVALID_OUTPUT, True, INVALID_OUTPUT_TRUNCATED)
    # Billed up to the cap, not the model's own limit (RUNAWAY_TOKENS without a cap).
    assert error.tokens_out == output_token_cap() < RUNAWAY_TOKENS
    assert error.tokens_in > 0 and error.billed


@pytest.mark.parametrize("fault", ["malformed", "refusal", "length"])
def test_an_invalid_answer_carries_the_usage_the_server_billed(provider, inp, openai_settings, fault):
    openai_settings.configure(faults={fault: 1.0})
    error = _error(provider, inp)
    billed = openai_settings.counters()["tokens_billed"]
    assert error.reason == FailureReason.INVALID_OUTPUT
    assert (error.tokens_in, error.tokens_out) == (billed["in"], billed["out"]) != (0, 0)


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (404, False), (422, False), (408, True),
                                                   (409, True)])
def test_only_408_409_and_429_among_4xx_are_retryable(provider, inp, openai_settings, status, retryable):
    openai_settings.configure(fail_when_contains=[""], fail_status=status)
    error = _error(provider, inp)
    assert (error.retryable, error.status_code, error.billed) == (retryable, status, False)


def test_one_generate_is_one_http_request_even_when_it_fails(provider, inp, openai_settings):
    openai_settings.configure(fault_500=1.0)
    _error(provider, inp)
    assert openai_settings.counters()["requests"] == 1
    assert provider._client.max_retries == 0


def test_malformed_output_is_a_retryable_invalid_output_error(provider, inp, openai_settings):
    openai_settings.configure(fault_malformed=1.0)
    errors = []
    for day in range(8):  # several requests: the stub alternates cut-off JSON and schema violations
        errors.append(_error(provider, GenerationInput(**{**_fields(inp), "for_date": FOR_DATE + dt.timedelta(day)})))
    assert {(e.reason, e.retryable) for e in errors} == {(FailureReason.INVALID_OUTPUT, True)}


def test_server_error_is_retryable_and_distinct_from_invalid_output(provider, inp, openai_settings):
    openai_settings.configure(fault_500=1.0)
    error = _error(provider, inp)
    assert (error.reason, error.retryable, error.status_code) == (FailureReason.SERVER_ERROR, True, 500)
    assert error.reason != FailureReason.INVALID_OUTPUT


def test_rate_limit_carries_retry_after_from_the_headers(provider, inp, openai_settings):
    openai_settings.configure(fault_429=1.0, retry_after=7)
    error = _error(provider, inp)
    assert (error.reason, error.retryable, error.retry_after, error.status_code) == (
        FailureReason.RATE_LIMITED, True, 7.0, 429)


def test_rate_limit_without_retry_after(provider, inp, openai_settings):
    openai_settings.configure(fault_429=1.0, retry_after=None)
    error = _error(provider, inp)
    assert (error.reason, error.retry_after) == (FailureReason.RATE_LIMITED, None)


def test_exhausted_quota_is_not_retryable(provider, inp, openai_settings):
    openai_settings.configure(fail_when_contains=["戊辰"], fail_status=429, fail_code="insufficient_quota")
    error = _error(provider, inp)
    assert (error.reason, error.retryable) == (FailureReason.QUOTA, False)


@pytest.mark.parametrize("fault", ["refusal", "length"])
def test_refusal_and_truncated_output_are_invalid_output(provider, inp, openai_settings, fault):
    openai_settings.configure(faults={fault: 1.0})
    error = _error(provider, inp)
    assert (error.reason, error.retryable) == (FailureReason.INVALID_OUTPUT, True)


def test_a_hang_beyond_the_timeout_is_a_retryable_timeout(openai_settings, inp):
    openai_settings.configure(fault_hang=1.0, hang_seconds=30)
    provider = get_provider(name="openai", timeout=1)
    error = _error(provider, inp)
    assert (error.reason, error.retryable) == (FailureReason.TIMEOUT, True)
    assert openai_settings.counters()["hangs"] == 1


def test_an_unreachable_base_url_is_a_retryable_connection_error(openai_settings, settings, inp):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{port}/v1"
    error = _error(get_provider(name="openai", timeout=30), inp)
    assert (error.reason, error.retryable) == (FailureReason.CONNECTION, True)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_is_a_bad_request_never_retried(provider, inp, openai_settings, status):
    openai_settings.configure(fail_when_contains=["戊辰"], fail_status=status)
    error = _error(provider, inp)
    assert (error.reason, error.retryable, error.status_code) == (FailureReason.BAD_REQUEST, False, status)


def test_missing_api_key_is_a_clear_config_error(settings):
    settings.OPENAI_API_KEY = ""
    with pytest.raises(ProviderConfigError) as caught:
        get_provider(name="openai")
    assert str(caught.value) == OPENAI_KEY_MISSING
    assert (caught.value.reason, caught.value.retryable) == (FailureReason.CONFIG, False)


def test_providers_share_one_client_per_configuration(openai_settings):
    first, second = get_provider(name="openai"), get_provider(name="openai")
    other_timeout = get_provider(name="openai", timeout=3)
    assert first._client is second._client
    assert other_timeout._client is not first._client


def test_concurrent_generations_through_one_provider(provider, inp, openai_settings):
    openai_settings.configure(latency_ms=50)
    inputs = [GenerationInput(**{**_fields(inp), "for_date": FOR_DATE + dt.timedelta(d)}) for d in range(16)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(provider.generate, inputs))
    assert [r.content.for_date for r in results] == [i.for_date for i in inputs]
    assert openai_settings.counters()["distinct_inputs"] == 16


@pytest.mark.django_db
def test_the_request_carries_the_saju_facts_and_nothing_that_identifies_the_user(provider, openai_settings):
    user = user_create(
        username="kim_minji_1990", email="minji.kim@example.com", first_name="민지", last_name="김",
        birth_date_solar=dt.date(1984, 2, 4), birth_time=dt.time(12, 0),
    )
    inp = GenerationInput.for_user(user=user, for_date=FOR_DATE, generator=provider.generator)
    provider.generate(inp)

    [request] = openai_settings.requests(bodies=True)
    body = json.loads(request["body"])
    text = json.dumps(body["messages"], ensure_ascii=False)
    block = inp.saju_block()
    for fact in (block.pillars.year, block.pillars.month, block.pillars.day, block.pillars.hour,
                 block.date_pillar, block.ten_god, "2025년 3월 1일"):
        assert fact in text
    for identifier in (user.username, user.email, "minji", "민지", "김민지"):
        assert identifier not in request["body"]
    assert request["sha256"] == messages_sha256(build_messages(inp))
    assert body["response_format"]["json_schema"]["strict"] is True


def test_prompt_names_an_unknown_birth_hour_instead_of_inventing_one(inp):
    system = build_messages(GenerationInput(**{**_fields(inp), "hour": None}))[0]["content"]
    assert "시주: 태어난 시간 모름" in system


def test_estimate_tokens_is_close_to_what_the_stub_bills(provider, inp):
    tokens_in, tokens_out = estimate_tokens(inp)
    generated = provider.generate(inp)
    # The stub bills with the same calibrated ratios; the estimate adds the chat framing and schema.
    assert 0.8 < generated.tokens_in / tokens_in < 1.2
    assert tokens_out > 0


def _fields(inp: GenerationInput) -> dict:
    return {name: getattr(inp, name) for name in inp.__dataclass_fields__}

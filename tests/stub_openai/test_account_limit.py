"""The stub's account limit and latency jitter, over real HTTP with the real SDK."""

import random
import time

import openai
import pytest

from tests.stub_openai.server import start_stub_process

SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["summary"],
    "properties": {"summary": {"type": "string"}}}}}


@pytest.fixture(scope="module")
def stub():
    process = start_stub_process()
    yield process
    process.stop()


def ask(stub, text: str = "hello"):
    client = openai.OpenAI(api_key="sk-test", base_url=stub.base_url, max_retries=0)
    try:
        return client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": text}], response_format=SCHEMA)
    finally:
        client.close()


def test_over_the_account_rpm_the_stub_answers_429_with_the_limit_headers(stub):
    stub.reset()
    stub.configure(account_rpm=6, account_window_s=30)  # 3 per 30 s
    for n in range(3):
        ask(stub, f"q{n}")
    with pytest.raises(openai.RateLimitError) as error:
        ask(stub, "q3")
    headers = error.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "6"  # per minute, as OpenAI states it
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < float(headers["retry-after-ms"]) <= 30_000
    account = stub.counters()["account"]
    assert account["rejected_429"] == 1 and account["max_requests_in_window"] == 3


def test_the_window_slides(stub):
    stub.reset()
    stub.configure(account_rpm=240, account_window_s=0.5)  # 2 per 0.5 s
    ask(stub, "a")
    ask(stub, "b")
    with pytest.raises(openai.RateLimitError):
        ask(stub, "c")
    time.sleep(0.6)
    ask(stub, "d")
    assert stub.counters()["account"]["rejected_429"] == 1


def test_over_the_account_tpm_the_stub_answers_429(stub):
    stub.reset()
    stub.configure(account_tpm=400, account_window_s=30)  # 200 tokens per 30 s
    first = ask(stub, "x" * 100).parse()
    used = first.usage.total_tokens
    assert used < 200
    with pytest.raises(openai.RateLimitError) as error:
        ask(stub, "y" * 600)  # its prompt alone would pass the window's tokens
    assert int(error.value.response.headers["x-ratelimit-limit-tokens"]) == 400
    assert stub.counters()["account"]["max_tokens_in_window"] == used


def test_latency_jitter_spreads_answers_around_the_latency(stub):
    stub.reset()
    stub.configure(latency_ms=100, latency_jitter_ms=80, seed=3)
    # The stub draws request n's latency from Random(f"{seed}:{n}:latency"): each answer waits at least that.
    expected = [0.1 + random.Random(f"3:{n}:latency").uniform(-1, 1) * 0.08 for n in range(1, 7)]
    assert max(expected) - min(expected) > 0.02
    for n, floor in enumerate(expected):
        started = time.monotonic()
        ask(stub, f"j{n}")
        assert time.monotonic() - started >= floor - 0.002

"""The stub server, over real HTTP in its own process (no database needed)."""

import json
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from core.fortunes.schema import GeneratedPart
from tests.stub_openai.server import (
    BAD_BODY_JSON,
    BAD_BODY_MESSAGES,
    FAULT_KINDS,
    fault_for,
    messages_sha256,
    start_stub_process,
)

NESTED_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["summary", "mood", "scores", "tags", "note", "lucky", "ratio", "ok", "color"],
    "properties": {
        "summary": {"type": "string", "minLength": 5, "maxLength": 40},
        "mood": {"enum": ["좋음", "보통", "나쁨"]},
        "scores": {"type": "array", "minItems": 2, "maxItems": 4, "items": {"$ref": "#/$defs/Scored"}},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}},
        "note": {"anyOf": [{"type": "string", "maxLength": 12}, {"type": "null"}]},
        "lucky": {"$ref": "#/$defs/Lucky"},
        "ratio": {"type": "number", "minimum": 0.5, "maximum": 0.75},
        "ok": {"type": "boolean"},
        "color": {"type": "string", "minLength": 1, "maxLength": 3},
    },
    "$defs": {
        "Scored": {
            "type": "object",
            "additionalProperties": False,
            "required": ["score", "text", "kind"],
            "properties": {
                "score": {"type": "integer", "minimum": 90, "maximum": 100},
                "text": {"type": "string", "minLength": 1, "maxLength": 30},
                "kind": {"anyOf": [{"$ref": "#/$defs/Kind"}, {"type": "null"}]},
            },
        },
        "Kind": {"type": "string", "enum": ["love", "money"]},
        "Lucky": {
            "type": "object",
            "additionalProperties": False,
            "required": ["number", "direction"],
            "properties": {
                "number": {"type": "integer", "minimum": 7, "maximum": 9},
                "direction": {"type": ["string", "null"], "maxLength": 10},
            },
        },
    },
}


def _post(url: str, payload, *, raw: bytes | None = None, timeout: float = 10) -> tuple[int, dict, dict]:
    data = raw if raw is not None else json.dumps(payload, ensure_ascii=False).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def _chat(stub, text: str = "안녕하세요", schema: dict | None = None) -> tuple[int, dict, dict]:
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    if schema is not None:
        payload["response_format"] = {"type": "json_schema", "json_schema": {"name": "T", "schema": schema}}
    return _post(stub.base_url + "/chat/completions", payload)


def _content(body: dict) -> str:
    return body["choices"][0]["message"]["content"]


def test_chat_answers_content_valid_for_a_nested_schema(stub_openai):
    for i in range(40):
        status, _, body = _chat(stub_openai, f"request {i}", NESTED_SCHEMA)
        assert status == 200
        jsonschema.validate(json.loads(_content(body)), NESTED_SCHEMA)
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0


def test_same_request_gets_the_same_answer_and_another_request_another(stub_openai):
    schema = GeneratedPart.model_json_schema()
    first = _content(_chat(stub_openai, "같은 요청", schema)[2])
    again = _content(_chat(stub_openai, "같은 요청", schema)[2])
    others = {_content(_chat(stub_openai, f"다른 요청 {i}", schema)[2]) for i in range(5)}
    assert first == again
    assert len(others - {first}) >= 4


def test_fortune_fields_get_korean_text(stub_openai):
    content = json.loads(_content(_chat(stub_openai, "운세", GeneratedPart.model_json_schema())[2]))
    part = GeneratedPart.model_validate(content)
    for text in (part.summary, part.advice, part.overall.text, part.categories.love.text, part.lucky.color):
        assert any("\uac00" <= ch <= "\ud7a3" for ch in text)


def test_the_real_sdk_parses_chat_and_responses_answers(stub_openai):
    client = openai.OpenAI(api_key="sk-test-stub", base_url=stub_openai.base_url, max_retries=0)
    messages = [{"role": "user", "content": "오늘의 운세"}]
    chat = client.chat.completions.parse(model="gpt-4o-mini", messages=messages, response_format=GeneratedPart)
    response = client.responses.parse(model="gpt-4o-mini", input="오늘의 운세", text_format=GeneratedPart)
    client.close()
    assert isinstance(chat.choices[0].message.parsed, GeneratedPart)
    assert isinstance(response.output_parsed, GeneratedPart)
    assert response.usage.input_tokens > 0
    assert stub_openai.counters()["by_path"] == {"/v1/chat/completions": 1, "/v1/responses": 1}


def _statuses(stub, count: int) -> list[tuple[int, int, str]]:
    for i in range(count):
        _chat(stub, f"q{i}", NESTED_SCHEMA)
    return [(r["n"], r["status"], r["fault"]) for r in stub.requests()]


FAULT_MIX = {"429": 0.2, "500": 0.1, "malformed": 0.15, "refusal": 0.05, "length": 0.05}


def test_fault_schedule_is_the_same_for_the_same_seed(stub_openai):
    stub_openai.configure(seed=11, faults=FAULT_MIX, retry_after=0)
    first = _statuses(stub_openai, 60)
    stub_openai.reset(config=False)
    second = _statuses(stub_openai, 60)
    stub_openai.reset(config=False)
    stub_openai.configure(seed=12)
    other_seed = _statuses(stub_openai, 60)

    assert first == second
    assert first != other_seed
    assert {fault for _, _, fault in first} == {"", "429", "500", "malformed", "refusal", "length"}
    expected = [fault_for(seed=11, n=n, faults=FAULT_MIX)[0] for n in range(1, 61)]
    assert [fault for _, _, fault in first] == expected


def test_fault_schedule_follows_request_numbers_under_concurrency(stub_openai):
    stub_openai.configure(seed=5, faults=FAULT_MIX, latency_ms=20)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: _chat(stub_openai, f"c{i}", NESTED_SCHEMA), range(40)))
    faults = {r["n"]: r["fault"] for r in stub_openai.requests()}
    assert faults == {n: fault_for(seed=5, n=n, faults=FAULT_MIX)[0] for n in range(1, 41)}


def test_429_carries_retry_after_headers(stub_openai):
    stub_openai.configure(fault_429=1.0, retry_after=2.5)
    status, headers, body = _chat(stub_openai)
    headers = {k.lower(): v for k, v in headers.items()}
    assert status == 429
    assert headers["retry-after"] == "2.5"
    assert headers["retry-after-ms"] == "2500"
    assert body["error"]["code"] == "rate_limit_exceeded"


def test_malformed_output_is_invalid_json_or_invalid_for_the_schema(stub_openai):
    stub_openai.configure(fault_malformed=1.0)
    kinds = set()
    for i in range(20):
        status, _, body = _chat(stub_openai, f"m{i}", NESTED_SCHEMA)
        assert status == 200
        try:
            value = json.loads(_content(body))
        except ValueError:
            kinds.add("not json")
            continue
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(value, NESTED_SCHEMA)
        kinds.add("schema violation")
    assert kinds == {"not json", "schema violation"}
    assert stub_openai.counters()["malformed"] == 20


def test_fail_when_contains_fails_matching_inputs_every_time(stub_openai):
    stub_openai.configure(fail_when_contains=["甲子", "nope"], fail_status=503)
    client = openai.OpenAI(api_key="sk-test-stub", base_url=stub_openai.base_url, max_retries=0)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError) as caught:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "일주 甲子"}])
        assert caught.value.status_code == 503
    ok = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "일주 乙丑"}])
    client.close()
    assert ok.choices[0].message.content
    assert stub_openai.counters()["by_status"] == {"503": 3, "200": 1}


def test_counters_and_requests_record_every_api_request(stub_openai):
    stub_openai.configure(seed=1, faults={"500": 0.5})
    messages = [{"role": "user", "content": "카운터"}]
    for _ in range(6):
        _post(stub_openai.base_url + "/chat/completions", {"model": "m", "messages": messages})
    _chat(stub_openai, "다른 입력")
    _post(stub_openai.base_url + "/chat/completions", None, raw=b"{not json")
    counters = stub_openai.counters()
    rows = stub_openai.requests()

    assert counters["requests"] == 8
    assert sum(counters["by_status"].values()) == 8
    assert counters["by_path"] == {"/v1/chat/completions": 8}
    assert counters["bad_requests"] == 1
    assert [r["n"] for r in rows] == list(range(1, 9))
    assert sum(r["sha256"] == messages_sha256(messages) for r in rows) == 6
    assert counters["distinct_inputs"] == 2


def test_bad_body_gets_400_with_an_openai_error_object(stub_openai):
    status, _, body = _post(stub_openai.base_url + "/chat/completions", None, raw=b"{not json")
    assert status == 400
    assert body["error"]["message"] == BAD_BODY_JSON
    assert body["error"]["type"] == "invalid_request_error"
    status, _, body = _post(stub_openai.base_url + "/chat/completions", {"model": "m", "messages": []})
    assert status == 400
    assert body["error"]["message"] == BAD_BODY_MESSAGES


def test_config_rejects_unknown_keys_and_bad_probabilities(stub_openai):
    with pytest.raises(ValueError, match="unknown config key"):
        stub_openai.configure(latency=5)
    with pytest.raises(ValueError, match="unknown kind"):
        stub_openai.configure(faults={"502": 0.1})
    with pytest.raises(ValueError, match="sum at most 1"):
        stub_openai.configure(faults={"429": 0.7, "500": 0.7})
    assert set(stub_openai.config()["faults"]) == set(FAULT_KINDS)


def test_a_hung_request_outlives_the_client_timeout(stub_openai):
    stub_openai.configure(fault_hang=1.0, hang_seconds=30)
    with pytest.raises(TimeoutError):
        _chat_with_timeout(stub_openai, 0.3)
    assert stub_openai.counters()["hangs"] == 1


def _chat_with_timeout(stub, timeout: float):
    payload = {"model": "m", "messages": [{"role": "user", "content": "hang"}]}
    return _post(stub.base_url + "/chat/completions", payload, timeout=timeout)


def test_serves_64_requests_at_once(stub_openai):
    # Long enough that 64 client threads on a busy 2-core box all get their request in.
    stub_openai.configure(latency_ms=1000)
    barrier = threading.Barrier(64)

    def call(i: int) -> int:
        barrier.wait()
        return _chat(stub_openai, f"동시 {i}")[0]

    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(call, range(64)))
    assert statuses == [200] * 64
    assert stub_openai.counters()["max_in_flight"] == 64


def test_command_line_options_and_stop():
    stub = start_stub_process(seed=3, fault_500=1.0, fail_when_contains=["x"])
    try:
        assert stub.base_url.startswith("http://127.0.0.1:") and stub.base_url.endswith("/v1")
        config = stub.config()
        assert (config["seed"], config["faults"]["500"], config["fail_when_contains"]) == (3, 1.0, ["x"])
        assert _chat(stub, "hello")[0] == 500
        assert stub.env()["OPENAI_BASE_URL"] == stub.base_url
    finally:
        stub.stop()
    assert stub.proc.returncode == 0

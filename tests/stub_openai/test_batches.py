"""The stub's Batch API, driven by the real SDK over HTTP (no database needed)."""

import io
import json
import time

import openai
import pytest

from core.fortunes.schema import GeneratedPart
from tests.stub_openai.server import BATCH_CONFIG_UNKNOWN_KEY, BATCH_DEFAULTS


@pytest.fixture
def client(stub_openai):
    sdk = openai.OpenAI(api_key="sk-test-stub", base_url=stub_openai.base_url, max_retries=0)
    yield sdk
    sdk.close()


def _jsonl(count: int, *, model: str = "gpt-4o-mini", prefix: str = "c") -> bytes:
    from core.fortunes.providers.openai import response_format

    lines = [{"custom_id": f"{prefix}{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": model, "messages": [{"role": "user", "content": f"day {i}"}],
                       "response_format": response_format()}} for i in range(count)]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _submit(client, data: bytes, **metadata):
    upload = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    return client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata=metadata or None)


def _lines(client, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines()]


def test_upload_keeps_the_bytes_and_the_purpose(client):
    data = _jsonl(3)
    upload = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert (upload.purpose, upload.bytes, upload.filename) == ("batch", len(data), "in.jsonl")
    assert client.files.content(upload.id).content == data
    assert [f.id for f in client.files.list(purpose="batch")] == [upload.id]
    assert client.files.delete(upload.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.content(upload.id)


def test_a_completed_batch_answers_every_line_with_schema_valid_content(client, stub_openai):
    batch = _submit(client, _jsonl(20), fortuna_key="k1")
    assert (batch.status, batch.metadata) == ("in_progress", {"fortuna_key": "k1"})
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert batch.request_counts.total == batch.request_counts.completed == 20
    lines = _lines(client, batch.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"c{i}" for i in range(20))
    for line in lines:
        assert line["error"] is None and line["response"]["status_code"] == 200
        GeneratedPart.model_validate_json(line["response"]["body"]["choices"][0]["message"]["content"])
    assert batch.error_file_id is None
    assert stub_openai.batch_state()["counters"]["batches_created"] == 1


def test_failed_lines_5xx_in_the_error_file_4xx_in_the_output_with_error_null(client, stub_openai):
    stub_openai.batch_configure(fail_5xx=0.2, fail_4xx=0.2, fail_malformed=0.1, seed=3)
    batch = client.batches.retrieve(_submit(client, _jsonl(60)).id)
    outcomes = stub_openai.batch_state()["batches"][0]["outcomes"]
    assert {"5xx", "4xx", "malformed", "ok"} <= set(outcomes)
    output, errors = _lines(client, batch.output_file_id), _lines(client, batch.error_file_id)
    assert {line["custom_id"] for line in errors} == set(outcomes["5xx"])
    assert all(line["response"] is None and line["error"]["code"] == "server_error" for line in errors)
    bad = {line["custom_id"] for line in output if line["response"]["status_code"] == 400}
    assert bad == set(outcomes["4xx"])
    assert all(line["error"] is None for line in output)
    assert len(output) + len(errors) == 60


def test_lines_come_out_of_order(client):
    batch = client.batches.retrieve(_submit(client, _jsonl(30)).id)
    order = [line["custom_id"] for line in _lines(client, batch.output_file_id)]
    assert order != [f"c{i}" for i in range(30)] and sorted(order) == sorted(f"c{i}" for i in range(30))


def test_a_batch_waits_for_its_completion_delay(client, stub_openai):
    stub_openai.batch_configure(completion_delay=0.6)
    batch = _submit(client, _jsonl(2))
    assert client.batches.retrieve(batch.id).status == "in_progress"
    time.sleep(0.7)
    assert client.batches.retrieve(batch.id).status == "completed"


def test_expiry_leaves_partial_output_and_batch_expired_errors(client, stub_openai):
    stub_openai.batch_configure(expire=True, partial_share=0.5)
    batch = client.batches.retrieve(_submit(client, _jsonl(40)).id)
    assert batch.status == "expired"
    output, errors = _lines(client, batch.output_file_id), _lines(client, batch.error_file_id)
    assert output and errors and len(output) + len(errors) == 40
    assert {line["error"]["code"] for line in errors} == {"batch_expired"}


def test_a_stuck_batch_is_cancelled_through_cancelling_with_partial_output(client, stub_openai):
    stub_openai.batch_configure(stuck=True, cancel_delay=0.5, partial_share=0.3)
    batch = _submit(client, _jsonl(30))
    time.sleep(0.1)
    assert client.batches.retrieve(batch.id).status == "in_progress"
    assert client.batches.cancel(batch.id).status == "cancelling"
    time.sleep(0.6)
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "cancelled"
    errors = _lines(client, batch.error_file_id)
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    assert 0 < len(_lines(client, batch.output_file_id)) < 30
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_download_failures_fail_the_first_n_downloads_only(client, stub_openai):
    batch = client.batches.retrieve(_submit(client, _jsonl(2)).id)
    stub_openai.batch_configure(download_failures=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.files.content(batch.output_file_id)
    assert len(_lines(client, batch.output_file_id)) == 2
    assert stub_openai.batch_state()["counters"]["download_failures"] == 2


def test_list_pages_newest_first_with_metadata(client):
    ids = [_submit(client, _jsonl(1, prefix=f"p{n}-"), fortuna_key=f"k{n}").id for n in range(5)]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
    every = list(client.batches.list(limit=2))  # the SDK follows `after` itself
    assert [b.id for b in every] == ids[::-1]
    assert [b.metadata["fortuna_key"] for b in every] == [f"k{n}" for n in range(5)][::-1]


def test_an_invalid_input_file_fails_the_batch(client):
    mixed = _jsonl(2) + _jsonl(1, model="gpt-4.1-mini", prefix="x")
    batch = client.batches.retrieve(_submit(client, mixed).id)
    assert batch.status == "failed"
    assert [e.code for e in batch.errors.data] == ["mixed_models"]


def test_a_bad_endpoint_is_refused(client):
    upload = client.files.create(file=("in.jsonl", io.BytesIO(_jsonl(1))), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=upload.id, endpoint="/v1/embeddings", completion_window="24h")


def test_unknown_batch_config_keys_are_refused(stub_openai):
    with pytest.raises(ValueError) as caught:
        stub_openai.batch_configure(delay=1)
    assert BATCH_CONFIG_UNKNOWN_KEY.split(":")[0] in str(caught.value)
    assert stub_openai.batch_state()["config"] == BATCH_DEFAULTS


def test_reset_forgets_files_and_batches(client, stub_openai):
    _submit(client, _jsonl(1))
    stub_openai.reset()
    state = stub_openai.batch_state()
    assert (state["files"], state["batches"], state["counters"]) == (0, [], {})

"""The Batch API's two executors and its output parser on their own (no server): what each answers
the engine, and what each line counts."""

import datetime as dt
import json
from types import SimpleNamespace

import pytest

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers.base import FailureReason
from core.fortunes.schema import GeneratedPart
from core.nightly.executors.openai_batch.collect import CollectedLinesExecutor
from core.nightly.executors.openai_batch.files import LINE_INVALID, LINE_OK, Line, Parsed, RowCounts, output_parse
from core.nightly.executors.openai_batch.reports import SubmitReport
from core.nightly.executors.openai_batch.submit import SubmitExecutor
from core.nightly.guards import StopToken
from core.nightly.outcomes import Deferred
from tests.factories import user_create

_SCORED = {"score": 61, "text": "차분하게 흐름을 살피면 좋은 하루입니다."}
PART = GeneratedPart(summary="작은 일에서 기쁨을 찾는 날입니다.", overall=_SCORED,
                     categories={"love": _SCORED, "money": _SCORED, "work": _SCORED, "health": _SCORED},
                     lucky={"color": "파란색", "number": 7, "direction": "동쪽"},
                     advice="서두르지 말고 한 가지에 집중하세요.")
DAY = dt.date(2026, 3, 1)


@pytest.fixture
def inputs(db) -> list[GenerationInput]:
    users = [user_create(birth_date_solar=dt.date(1980 + n, 1, 10)) for n in range(3)]
    for user in users:
        user.refresh_from_db()
    return [GenerationInput.for_user(user=user, for_date=DAY, generator="openai:gpt-4o-mini") for user in users]


def test_a_valid_line_is_a_batch_generation_and_an_invalid_one_a_failure(inputs):
    row = SimpleNamespace(pk=1, batch_id="batch_x")
    good, bad = inputs[0], inputs[1]
    lines = {good.hash: Line(PART.model_dump_json(), 120, 300, row), bad.hash: Line("{not json", 100, 5, row)}
    executor = CollectedLinesExecutor(lines=lines)

    made = executor.submit(good.hash, good, [1])
    assert made.generated.service_tier == "batch" and made.error is None
    assert (made.generated.tokens_in, made.generated.tokens_out) == (120, 300)
    assert made.generated.content.summary == PART.summary and made.generated.content.for_date == DAY
    failed = executor.submit(bad.hash, bad, [2])
    assert failed.generated is None and failed.error.reason == FailureReason.INVALID_OUTPUT
    assert (lines[good.hash].outcome, lines[bad.hash].outcome) == (LINE_OK, LINE_INVALID)
    assert lines[good.hash].content == ""  # the engine's job holds the generation now, not the line


def test_the_submit_executor_defers_every_input_and_sends_none_already_open(inputs):
    report = SubmitReport(target_date=DAY, dry_run=True, model="gpt-4o-mini")
    executor = SubmitExecutor(client=None, report=report, in_flight={inputs[0].hash}, stop=StopToken(),
                              max_requests=1, max_bytes=10**9)
    outcomes = [executor.submit(inp.hash, inp, [n]) for n, inp in enumerate(inputs)]
    executor.finish()
    assert outcomes == [Deferred(submitted=False), Deferred(), Deferred()]
    assert report.requests == 2 and [count for count, _ in report.files] == [1, 1]  # max_requests=1: a file each
    assert report.tokens_in > 0 and report.tokens_out > 0


def test_the_parser_keeps_200_lines_and_counts_the_rest():
    row = SimpleNamespace(pk=1, batch_id="batch_x")
    usage = {"prompt_tokens": 10, "completion_tokens": 20}

    def answer(custom_id, *, status=200, content="{}", finish="stop"):
        body = {"usage": usage, "choices": [{"finish_reason": finish, "message": {"content": content}}]}
        return json.dumps({"custom_id": custom_id, "response": {"status_code": status, "body": body}, "error": None})

    text = "\n".join([answer("a"), answer("b", status=400), answer("c", finish="length"), "not json", "[1]",
                      json.dumps({"response": {}}), answer("d", content=""), ""])
    counts, parsed = RowCounts(), Parsed(lines={})
    output_parse(text, row=row, counts=counts, parsed=parsed)
    assert list(parsed.lines) == ["a"] and parsed.unmatched == 3
    assert counts.failed_lines == 3  # b (400), c (truncated), d (empty): their inputs go synchronous
    assert (counts.tokens_in, counts.tokens_out) == (4 * 10, 4 * 20)  # billed whatever the line's outcome

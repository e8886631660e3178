"""FortuneJSONRenderer against DRF's JSONRenderer: the same bytes for the same data, and stored JSON
written as it is."""

import datetime as dt
import decimal
import json
import uuid

import pytest
from django.utils.translation import gettext_lazy
from rest_framework.exceptions import ErrorDetail
from rest_framework.renderers import JSONRenderer

from core.api.renderers import FortuneJSONRenderer, StoredJSON

KST = dt.timezone(dt.timedelta(hours=9))

SAMPLES = {
    "fortune envelope": {"date": "2026-12-02", "source": "batch", "generated_at": "2026-12-02T22:00:00.123456+09:00"},
    "error body": {"detail": ErrorDetail("Invalid token.", code="authentication_failed"), "code": "auth"},
    "field errors": {"birth_date_solar": [ErrorDetail("Enter a date before today.", code="invalid")]},
    "korean and escapes": {"text": '오늘의 운세 "따옴표" \\ 줄\n바꿈\t탭 \x01', "emoji": "🍀"},
    "line separators": {"text": "a\u2028b\u2029c"},
    "numbers and constants": {"int": -7, "big": 2**70, "float": 0.1, "true": True, "false": False, "none": None},
    "nested": {"list": [1, [2, {"three": [3.5]}], ()], "empty": {}, "tuple": (1, "a")},
    "python values DRF encodes": {
        "datetime": dt.datetime(2026, 12, 2, 13, 0, 0, 500, tzinfo=dt.UTC),
        "kst": dt.datetime(2026, 12, 2, 22, 0, tzinfo=KST),
        "date": dt.date(2026, 12, 2),
        "time": dt.time(7, 30),
        "decimal": decimal.Decimal("12.50"),
        "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
        "lazy": gettext_lazy("Not found."),
        "bytes": b"raw",
    },
    "a list at the top": [{"a": 1}, {"b": [True, None]}],
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_same_bytes_as_drfs_renderer(name):
    data = SAMPLES[name]
    assert FortuneJSONRenderer().render(data) == JSONRenderer().render(data)


def test_nothing_renders_as_an_empty_body():
    assert FortuneJSONRenderer().render(None) == JSONRenderer().render(None) == b""


def test_stored_json_is_written_as_it_is():
    stored = '{"summary": "차분한 하루", "overall": {"score": 71, "text": "좋은 날"}, "lucky": [1, 2]}'
    body = FortuneJSONRenderer().render({"date": "2026-12-02", "fortune": StoredJSON(stored), "source": "batch"})
    assert stored.encode() in body
    decoded = json.loads(stored)
    assert json.loads(body) == {"date": "2026-12-02", "fortune": decoded, "source": "batch"}


def test_the_browsable_api_gets_the_stored_json_decoded_and_indented():
    stored = '{"summary": "\\ucc28\\ubd84\\ud55c \\ud558\\ub8e8", "lucky": [1, 2]}'  # as SQLite stores it
    data = {"fortune": StoredJSON(stored), "source": "batch"}
    body = FortuneJSONRenderer().render(data, "application/json", {"indent": 4})
    decoded = {"fortune": {"summary": "차분한 하루", "lucky": [1, 2]}, "source": "batch"}
    assert body == JSONRenderer().render(decoded, "application/json", {"indent": 4})
    assert "차분한 하루" in body.decode()


def test_line_separators_in_stored_json_are_escaped_as_drf_escapes_them():
    body = FortuneJSONRenderer().render({"fortune": StoredJSON('{"text": "a\u2028b"}')})
    assert b"\\u2028" in body and "\u2028".encode() not in body
    assert json.loads(body) == {"fortune": {"text": "a\u2028b"}}


def test_what_drf_cannot_encode_it_cannot_either():
    with pytest.raises(TypeError):
        JSONRenderer().render({"x": object()})
    with pytest.raises(TypeError):
        FortuneJSONRenderer().render({"x": object()})

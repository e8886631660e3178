"""The fortune endpoints' JSON renderer: DRF's JSONRenderer encoding with orjson, so that the fortune
content read from the database as JSON text (StoredJSON) goes into the body as it is.

Decoding the stored content only to encode it again was the largest part of building a fortune
response (docs/BENCHMARKS.md, API). Everything else comes out as DRF's renderer writes it (compact,
UTF-8, U+2028/U+2029 escaped, DRF's encoder for dates, decimals and lazy strings; DRF's renderer
itself for indented bodies and whatever orjson refuses): tests/api/test_renderers.py compares the
bytes with DRF's JSONRenderer.
"""

import json
from dataclasses import dataclass
from typing import Any

import orjson
from rest_framework.renderers import JSONRenderer
from rest_framework.utils.encoders import JSONEncoder

# DRF writes these two as escapes, so that a body is also a valid JavaScript literal.
_LINE_SEPARATORS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"))


@dataclass(frozen=True, slots=True)
class StoredJSON:
    """JSON text as the database stored it, for the renderer to write without decoding it."""

    text: str

    def decoded(self) -> Any:
        return json.loads(self.text)


class _Encoder(JSONEncoder):
    """DRF's encoder, decoding stored JSON: for what orjson does not write (see FortuneJSONRenderer)."""

    def default(self, obj: Any) -> Any:
        if isinstance(obj, StoredJSON):
            return obj.decoded()
        return super().default(obj)


_drf_default = JSONEncoder().default


def _orjson_default(value: Any) -> Any:
    if isinstance(value, StoredJSON):
        return orjson.Fragment(value.text)
    return _drf_default(value)


# orjson would write datetimes, dates, times and dataclasses its own way: they go to DRF's encoder.
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


class FortuneJSONRenderer(JSONRenderer):
    encoder_class = _Encoder

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: dict | None = None) -> bytes:
        if data is None or self.get_indent(accepted_media_type, renderer_context or {}):
            # Indented, for people (the browsable API): DRF's own rendering, the stored JSON decoded.
            return super().render(data, accepted_media_type, renderer_context)
        try:
            body = orjson.dumps(data, default=_orjson_default, option=_OPTIONS)
        except orjson.JSONEncodeError:
            # What orjson refuses (integers beyond 64 bits) DRF writes; what neither can, DRF refuses.
            return super().render(data, accepted_media_type, renderer_context)
        for raw, escaped in _LINE_SEPARATORS:
            if raw in body:
                body = body.replace(raw, escaped)
        return body

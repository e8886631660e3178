"""Error bodies: every API error is `{"detail", "code"}` except field validation (`{field: [messages]}`).

DRF's own handler renders `{"detail": "Invalid token."}` for its exceptions; the handler below adds
the exception's code, so authentication, permission, throttle and parse errors match ErrorSerializer
like the errors the views answer themselves (core.api.http.error_response). Field validation keeps
DRF's shape (clients read the messages per field); the schema describes both (core.api.schema).
"""

from typing import Any

from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()


# DRF's ValidationError body: each invalid field (or non_field_errors) with its messages.
FIELD_ERRORS_SCHEMA = {
    "type": "object",
    "description": "Each invalid field (or non_field_errors) with its messages.",
    "additionalProperties": {"type": "array", "items": {"type": "string"}},
    "minProperties": 1,
}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, with the code DRF already knows (ErrorDetail.code) beside the detail."""
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and set(response.data) == {"detail"}:
        detail = response.data["detail"]
        if isinstance(detail, str):  # not a field named "detail" with a list of messages
            response.data["code"] = getattr(detail, "code", None) or "error"
    return response

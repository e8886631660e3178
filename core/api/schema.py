"""The OpenAPI schema class: each operation also lists the errors DRF itself answers for its view.

drf-spectacular documents what a view declares; the 401 of an authenticated view, the 429 of a
throttled one and the 400 of a request body come from DRF's machinery around the view, so they are
added here from the view's own authenticators, throttles and body (a declared response wins).
"""

from typing import Any

from drf_spectacular.openapi import AutoSchema
from rest_framework.authentication import SessionAuthentication

from core.api.exceptions import FIELD_ERRORS_SCHEMA, ErrorSerializer

UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}, "description": description}


class FortunaAutoSchema(AutoSchema):
    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        error = self.resolve_serializer(ErrorSerializer, "response").ref
        responses = operation.setdefault("responses", {})
        for code, response in self._framework_errors(operation, error).items():
            responses.setdefault(code, response)
        return operation

    def _framework_errors(self, operation: dict[str, Any], error: dict[str, Any]) -> dict[str, dict[str, Any]]:
        errors = {}
        if "requestBody" in operation:
            errors["400"] = _json(
                {"oneOf": [FIELD_ERRORS_SCHEMA, error]}, "Invalid fields, or a body that does not parse."
            )
            errors["415"] = _json(error, "Unsupported request content type.")
        authenticators = self.view.get_authenticators()
        if authenticators:
            errors["401"] = _json(error, "Missing or invalid credentials (Authorization: Token <key>).")
            if self.method in UNSAFE_METHODS and any(isinstance(a, SessionAuthentication) for a in authenticators):
                errors["403"] = _json(error, "A session-authenticated write without a valid CSRF token.")
        if self.view.get_throttles():
            errors["429"] = _json(error, "Request rate limit reached; see Retry-After.")
        return errors

import pytest
from rest_framework.test import APIClient

from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db

ROUTES = [
    ("get", "/fortune/today"), ("get", "/fortune/2024-01-01"), ("get", "/me"), ("post", "/auth/register"),
    ("post", "/auth/token"), ("post", "/auth/logout"), ("get", "/healthz"), ("get", "/healthz/batch"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("suffix", ["", "/"])
def test_every_route_answers_with_and_without_slash_without_redirect(user, method, path, suffix):
    response = getattr(client_for(user), method)(path + suffix, {}, format="json")
    assert response.status_code not in (301, 302, 308), response.status_code
    if response.status_code == 404:  # our view's answer for a date without a fortune, not a missing route
        assert response.json()["code"] == "not_found", path
    assert "Location" not in response


def test_the_benchmark_reference_view_is_not_served_in_production(user):
    # bench/settings.py serves it (tests/bench/test_settings.py); production URLs never do.
    assert client_for(user).get("/api/ping").status_code == 404


def test_openapi_schema_lists_the_api():
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for expected in ["/fortune/today", "/fortune/{date}", "/me", "/auth/register", "/auth/token", "/healthz"]:
        assert any(p.rstrip("/") == expected for p in paths), (expected, sorted(paths))
    assert "TokenAuth" in str(schema["components"].get("securitySchemes", {})) or "tokenAuth" in str(schema)


def test_docs_page_is_served():
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    assert b"/api/schema/" in response.content


def _schema() -> dict:
    return APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()


def test_schema_lists_the_framework_errors_of_each_operation():
    paths = _schema()["paths"]
    error = {"$ref": "#/components/schemas/Error"}

    def schema_of(path, method, code):
        return paths[path][method]["responses"][code]["content"]["application/json"]["schema"]

    for path, method in [("/me/", "get"), ("/me/", "patch"), ("/fortune/today/", "get"), ("/auth/logout/", "post")]:
        assert schema_of(path, method, "401") == error, (path, method)
        assert schema_of(path, method, "429") == error, (path, method)
    assert schema_of("/me/", "patch", "403") == error  # session auth's CSRF check on a write
    assert "403" not in paths["/me/"]["get"]["responses"]
    assert error in schema_of("/auth/register/", "post", "400")["oneOf"]
    assert schema_of("/auth/register/", "post", "429") == error
    for path in ["/auth/register/", "/auth/token/", "/healthz/"]:  # no authentication on these
        assert "401" not in paths[path]["post" if path.startswith("/auth") else "get"]["responses"], path
    # a declared response wins over the generic one
    assert paths["/fortune/today/"]["get"]["responses"]["429"]["description"].startswith("Daily on-demand limit")


def test_schema_marks_the_profile_objects_that_may_be_null():
    profile = _schema()["components"]["schemas"]["ProfileOutput"]["properties"]
    for name in ["birth_lunar", "natal_pillars", "birth_time", "birth_date_solar"]:
        assert profile[name]["nullable"] is True, name
    assert profile["birth_lunar"]["allOf"] == [{"$ref": "#/components/schemas/BirthLunarOutput"}]
    assert "format" not in profile["birth_time"]  # OpenAPI's "time" requires an offset the API never writes

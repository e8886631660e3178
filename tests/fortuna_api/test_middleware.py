"""Railway's deploy healthcheck host is accepted on the health endpoints only (issue 16, item 5)."""

import pytest

from fortuna_api.middleware import RAILWAY_HEALTHCHECK_HOST

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/healthz", "/healthz/", "/healthz/batch"])
def test_the_railway_healthcheck_host_reaches_the_health_endpoints(client, path):
    response = client.get(path, HTTP_HOST=RAILWAY_HEALTHCHECK_HOST)
    assert response.status_code in (200, 503)  # /healthz/batch: 503 until a night has succeeded
    assert response.json()


def test_the_healthcheck_answers_ok_with_that_host_and_a_port(client):
    response = client.get("/healthz", HTTP_HOST=f"{RAILWAY_HEALTHCHECK_HOST}:8080")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["database"] == "ok"


@pytest.mark.parametrize("path", ["/api/schema/", "/auth/token", "/admin/login/", "/healthz/other", "/healthzz"])
def test_the_same_host_is_refused_everywhere_else(client, path):
    assert client.get(path, HTTP_HOST=RAILWAY_HEALTHCHECK_HOST).status_code == 400


def test_other_unknown_hosts_are_still_refused_on_the_health_endpoint(client):
    assert client.get("/healthz", HTTP_HOST="evil.example").status_code == 400
    assert client.get("/healthz", HTTP_HOST="healthcheck.railway.app.evil.example").status_code == 400

"""Railway's deploy healthcheck (Host: healthcheck.railway.app) against gunicorn started from the
Procfile with production settings: DEBUG off, ALLOWED_HOSTS the service's own (issue 16, item 5)."""

import pytest
from django.db import connection

from fortuna_api.middleware import RAILWAY_HEALTHCHECK_HOST
from tests.deploy.server import database_url_for, production_env, web_server_start, web_server_stop

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]


def test_railways_healthcheck_host_gets_200_on_healthz_and_400_elsewhere(tmp_path):
    env = production_env(database_url=database_url_for(connection.settings_dict), port=0,
                         extra={"ALLOWED_HOSTS": "fortuna.up.railway.app", "WEB_CONCURRENCY": "1"})
    server = web_server_start(env=env, log_path=tmp_path / "gunicorn.log")
    try:
        railway = {"Host": RAILWAY_HEALTHCHECK_HOST}
        # Railway's check comes over plain HTTP from inside its network: no X-Forwarded-Proto.
        plain = server.request("/healthz", headers={**railway, "X-Forwarded-Proto": "http"})
        assert plain.status == 200, server.log()[-4000:]
        assert (plain.json()["status"], plain.json()["database"]) == ("ok", "ok")
        assert server.request("/healthz", headers=railway).status == 200
        assert server.request("/api/schema/", headers=railway).status == 400
        assert server.request("/auth/token", method="POST", headers=railway).status == 400
        assert server.request("/healthz", headers={"Host": "evil.example"}).status == 400
        assert server.request("/healthz", headers={"Host": "fortuna.up.railway.app"}).status == 200
    finally:
        web_server_stop(server)

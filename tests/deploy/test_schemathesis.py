"""The OpenAPI contract: schemathesis runs /api/schema/ against gunicorn as a logged-in user.

Every response must be no server error and match the schema for its status. The run is bounded
(few examples per operation) and reproducible (one worker, a fixed seed, no example database).
Deleting the account and logging out end the token, so those two run last with a token of their own.
"""

import datetime as dt
import re
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.authtoken.models import Token

from core.models import NightlyRun
from tests.deploy.server import PROXY_HEADERS, database_url_for, production_env, web_server_start, web_server_stop
from tests.factories import user_create

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

SEED = 20261201
MAX_EXAMPLES = 5
CHECKS = "not_a_server_error,response_schema_conformance"
DESTRUCTIVE = ("--include-path", "/auth/logout/", "--include-method", "DELETE")
NO_AUTHENTICATION = "^/(auth/register|auth/token|healthz)"  # these views authenticate no one
# A run whose token does not work tests nothing behind authentication: fail it.
STRICT_CONFIG = '[warnings]\nfail-on = ["missing_auth"]\n'
# The run sends many requests per second from one address: the production rates would answer 429.
UNTHROTTLED = {"THROTTLE_ANON": "100000/min", "THROTTLE_USER": "100000/min", "THROTTLE_AUTH": "100000/min"}


def schemathesis_run(
    *, schema_path: Path, base_url: str, token: str, config_path: Path, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    headers = [f"{name}: {value}" for name, value in {**PROXY_HEADERS, "Authorization": f"Token {token}"}.items()]
    argv = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config_path), "run",
        str(schema_path), "--url", base_url,
        *(arg for header in headers for arg in ("-H", header)),
        "--checks", CHECKS, "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES), "--workers", "1",
        "--generation-database", "none", "--request-timeout", "30", "--no-color", *extra,
    ]
    return subprocess.run(argv, cwd=config_path.parent, capture_output=True, text=True, timeout=300)


def _logged_in_token(username: str) -> str:
    # Staff, so the operators' /ops/status.json (in the schema too) answers as well as the user API.
    user = user_create(username=username, email=f"{username}@example.com", is_staff=True)
    return Token.objects.create(user=user).key


def _assert_passed(run: subprocess.CompletedProcess, *, selected: int) -> None:
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    assert f"Selected: {selected}/" in run.stdout and f"Tested: {selected}" in run.stdout, run.stdout[-3000:]


def test_responses_match_the_openapi_schema(tmp_path):
    now = timezone.now()
    # The nightly batch succeeded, so /healthz/batch answers 200 (its 503 is a documented alarm, a 5xx all the same).
    NightlyRun.objects.create(
        base_date=timezone.localdate(now), target_date=timezone.localdate(now) + dt.timedelta(days=1),
        status=NightlyRun.Status.SUCCEEDED, started_at=now, heartbeat_at=now, finished_at=now,
    )
    token, destructive_token = _logged_in_token("contract"), _logged_in_token("contract-end")
    strict_config, config = tmp_path / "schemathesis.toml", tmp_path / "schemathesis-401.toml"
    strict_config.write_text(STRICT_CONFIG)
    config.write_text("")  # the runs below answer 401 on purpose
    env = production_env(database_url=database_url_for(connection.settings_dict), port=0, extra=UNTHROTTLED)
    server = web_server_start(env=env, log_path=tmp_path / "gunicorn.log")
    try:
        # Served anonymously (an invalid token would get a 401 here too), read by every run from a file.
        schema = server.request("/api/schema/?format=json")
        assert schema.status == 200, schema.body[:2000]
        schema_path = tmp_path / "openapi.json"
        schema_path.write_bytes(schema.body)
        operations = [(path, method) for path, item in schema.json()["paths"].items() for method in item]
        authenticated = [path for path, _ in operations if not re.match(NO_AUTHENTICATION, path)]
        run = partial(schemathesis_run, schema_path=schema_path, base_url=server.base_url)
        exclude_destructive = tuple(arg.replace("--include", "--exclude") for arg in DESTRUCTIVE)
        # The destructive run takes every DELETE (/me, /me/devices/{id}) and the logout.
        destructive = [op for op in operations if op[1] == "delete" or op[0] == "/auth/logout/"]
        _assert_passed(
            run(token=token, config_path=strict_config, extra=exclude_destructive),
            selected=len(operations) - len(destructive),
        )
        # A token that matches no user: the 401 bodies of every authenticated operation (fuzzing only: bounded).
        _assert_passed(
            run(token="0" * 40, config_path=config,
                extra=("--phases", "fuzzing", "--exclude-path-regex", NO_AUTHENTICATION)),
            selected=len(authenticated),
        )
        # Last, as the first DELETE /me or logout ends the token: 204 first, then 401s.
        _assert_passed(
            run(token=destructive_token, config_path=config, extra=DESTRUCTIVE),
            selected=len(destructive),
        )
    finally:
        web_server_stop(server)
    assert "Traceback" not in server.log(), server.log()[-4000:]

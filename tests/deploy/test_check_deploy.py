"""`manage.py check --deploy` with the variables a Railway deployment sets (issue 4, item 11)."""

import secrets
import subprocess
import sys

import pytest

from tests.deploy.server import BASE_DIR, production_env

pytestmark = pytest.mark.subprocess

SECRET_KEY_REQUIRED = "SECRET_KEY is required when DEBUG is off"


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120
    )


def _production_env(**overrides: str) -> dict[str, str]:
    env = production_env(database_url="postgres://fortuna@db.railway.internal:5432/railway", port=8000)
    env.update(
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="fortuna.up.railway.app",
        CSRF_TRUSTED_ORIGINS="https://fortuna.up.railway.app",
    )
    env.update(overrides)
    return {name: value for name, value in env.items() if value is not None}


def test_check_deploy_passes_with_production_variables():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=_production_env())

    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_when_debug_is_on():
    # The check itself must be able to fail: DEBUG=1 is the one thing production must never set.
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=_production_env(DEBUG="1"))

    assert result.returncode != 0
    assert "security.W018" in result.stderr


def test_missing_secret_key_with_debug_off_stops_with_a_clear_message():
    env = _production_env()
    del env["SECRET_KEY"]

    result = _manage("check", "--deploy", env=env)

    assert result.returncode != 0
    assert SECRET_KEY_REQUIRED in result.stderr


def test_collectstatic_works_with_production_variables(tmp_path):
    # Railway's build step runs it (railway.toml buildCommand); whitenoise serves the result.
    env = _production_env()
    result = subprocess.run(
        [sys.executable, "-c",
         "import django, sys; from django.conf import settings; from django.core.management import call_command;"
         "django.setup(); settings.STATIC_ROOT = sys.argv[1]; call_command('collectstatic', '--noinput')",
         str(tmp_path / "static")],
        cwd=BASE_DIR, env=env, capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "static" / "admin" / "css" / "base.css").exists()
    # CompressedStaticFilesStorage: whitenoise serves the pre-compressed copy to gzip clients.
    assert (tmp_path / "static" / "admin" / "css" / "base.css.gz").exists()

"""Every environment setting has an error path a person can act on (the process refuses to start)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE = "import django; django.setup(); from django.conf import settings; print(settings.FORTUNE_PROVIDER)"


def start(**overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "OPENAI_API_KEY", "FORTUNE_PROVIDER"}}
    env |= {"DJANGO_SETTINGS_MODULE": "fortuna_api.settings", "DEBUG": "1", "SECRET_KEY": ""} | overrides
    return subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_defaults_start_with_the_local_provider():
    result = start()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "local"


def test_openai_is_the_default_provider_when_a_key_is_set():
    assert start(OPENAI_API_KEY="sk-test").stdout.strip() == "openai"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"DEBUG": "0"}, "SECRET_KEY is required when DEBUG is off"),
        ({"DEBUG": "maybe"}, "DEBUG must be true or false"),
        ({"DATABASE_URL": "mysq://nowhere"}, "DATABASE_URL is not a database URL"),
        ({"FORTUNE_PROVIDER": "gpt"}, "FORTUNE_PROVIDER must be one of openai, local"),
        ({"OPENAI_TIMEOUT": "soon"}, "OPENAI_TIMEOUT must be a whole number"),
        ({"OPENAI_TIMEOUT": "0"}, "OPENAI_TIMEOUT must be between 1 and 600"),
        ({"FORTUNE_MAX_COST_PER_RUN": "-1"}, "FORTUNE_MAX_COST_PER_RUN must be a number"),
        ({"SAJU_ZI_CONVENTION": "midnight"}, "SAJU_ZI_CONVENTION must be one of joja, yaja"),
        ({"USE_S3": "1"}, "Set the environment variable AWS_ACCESS_KEY_ID"),
        ({"OPENAI_TPM": "lots"}, "OPENAI_TPM must be a whole number"),
        ({"OPENAI_ON_DEMAND_RESERVE": "-0.1"}, "OPENAI_ON_DEMAND_RESERVE must be a number"),
        ({"OPENAI_ON_DEMAND_RESERVE": "1"}, "OPENAI_ON_DEMAND_RESERVE must be a fraction below 1"),
        ({"CELERY_BROKER_URL": "http://127.0.0.1:6379"}, "CELERY_BROKER_URL must be a redis://, rediss:// or amqp://"),
        ({"FORTUNE_CELERY_INFLIGHT": "0"}, "FORTUNE_CELERY_INFLIGHT must be between 1 and 4096"),
        ({"FORTUNE_CELERY_VISIBILITY_TIMEOUT": "10"}, "FORTUNE_CELERY_VISIBILITY_TIMEOUT must be between 60"),
        ({"DB_RETRY_WINDOW_SECONDS": "a minute"}, "DB_RETRY_WINDOW_SECONDS must be a whole number"),
        ({"DB_STATEMENT_TIMEOUT_MS": "-1"}, "DB_STATEMENT_TIMEOUT_MS must be between 0 and 3600000"),
        ({"FCM_API_URL": "fcm.googleapis.com"}, "FCM_API_URL must be a http:// or https:// URL"),
        ({"FCM_CONCURRENCY": "0"}, "FCM_CONCURRENCY must be between 1 and 1024"),
        ({"FCM_RATE_PER_SECOND": "fast"}, "FCM_RATE_PER_SECOND must be a whole number"),
        ({"PUSH_PAGE_SIZE": "0"}, "PUSH_PAGE_SIZE must be between 1 and 10000"),
        ({"PUSH_REPORT_AT": "10am"}, "PUSH_REPORT_AT must be a time of day written HH:MM"),
        ({"DB_BATCH_STATEMENT_TIMEOUT_MS": "slow"}, "DB_BATCH_STATEMENT_TIMEOUT_MS must be a whole number"),
        ({"DATABASE_URL": "postgres://u@h/d", "DB_CONNECT_TIMEOUT_SECONDS": "0"},
         "DB_CONNECT_TIMEOUT_SECONDS must be between 1 and 600"),
        ({"DATABASE_URL": "postgres://u@h/d", "DB_KEEPALIVES_IDLE_SECONDS": "x"},
         "DB_KEEPALIVES_IDLE_SECONDS must be a whole number"),
    ],
)
def test_bad_environment_refuses_to_start_with_a_clear_message(overrides, message):
    result = start(**overrides)
    assert result.returncode != 0
    assert message in result.stderr


CELERY_PROBE = (
    "import django; django.setup(); from fortuna_api import celery_app as app; "
    "print(app.conf.broker_url, app.conf.task_acks_late, app.conf.task_reject_on_worker_lost, "
    "app.conf.worker_prefetch_multiplier, app.conf.broker_transport_options['visibility_timeout'])"
)


def _celery_conf(**overrides: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    env |= {"DJANGO_SETTINGS_MODULE": "fortuna_api.settings", "DEBUG": "1", "SECRET_KEY": ""} | overrides
    result = subprocess.run([sys.executable, "-c", CELERY_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_celery_takes_its_broker_from_redis_url_and_acks_late():
    assert _celery_conf(REDIS_URL="redis://cache:6379/1") == ["redis://cache:6379/1", "True", "True", "1", "900"]


def test_celery_broker_url_wins_over_redis_url():
    conf = _celery_conf(REDIS_URL="redis://cache:6379/1", CELERY_BROKER_URL="amqp://guest:guest@mq:5672//",
                        FORTUNE_CELERY_VISIBILITY_TIMEOUT="120")
    assert conf[0] == "amqp://guest:guest@mq:5672//" and conf[-1] == "120"


def manage_check(**overrides: str) -> subprocess.CompletedProcess:
    """`manage.py check` as an operator (or a deploy) runs it, with the environment given."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "OPENAI_API_KEY", "FORTUNE_PROVIDER"}}
    env |= {"DJANGO_SETTINGS_MODULE": "fortuna_api.settings", "DEBUG": "1", "SECRET_KEY": ""} | overrides
    return subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


SLACK_SECRET = "T0000/B0000/XXXXsecretXXXX"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # Issue 16: each of these used to pass start-up and fail at the first request that read it.
        ({"THROTTLE_ANON": "lots"}, "THROTTLE_ANON must be a rate written COUNT/PERIOD"),
        ({"THROTTLE_USER": "10/fortnight"}, "THROTTLE_USER must be a rate written COUNT/PERIOD"),
        ({"THROTTLE_AUTH": "20 per minute"}, "THROTTLE_AUTH must be a rate written COUNT/PERIOD"),
        ({"FORTUNE_BATCH_DEADLINE": "25:00"}, "FORTUNE_BATCH_DEADLINE must be a time of day written HH:MM"),
        ({"FORTUNE_BATCH_DEADLINE": "late"}, "FORTUNE_BATCH_DEADLINE must be a time of day written HH:MM"),
        ({"OPENAI_BASE_URL": "localhost:8080/v1"}, "OPENAI_BASE_URL must be a http:// or https:// URL"),
        ({"SLACK_WEBHOOK_URL": f"hooks.slack.com/services/{SLACK_SECRET}"}, "SLACK_WEBHOOK_URL must be a http://"),
        ({"DISCORD_WEBHOOK_URL": "https:///api/webhooks/1/x"}, "DISCORD_WEBHOOK_URL must be a http:// or https:// URL"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL must be a redis:// or rediss:// or unix:// URL"),
        ({"CSRF_TRUSTED_ORIGINS": "fortuna.example"}, "CSRF_TRUSTED_ORIGINS entries must start with https://"),
        ({"FORTUNE_RETENTION_DAYS": "99999999999"}, "FORTUNE_RETENTION_DAYS must be between 1 and 36500"),
        ({"GUNICORN_THREADS": "0"}, "GUNICORN_THREADS must be between 1 and 1024"),
        ({"OPENAI_RPM": "-1"}, "OPENAI_RPM must be at least 0, got -1."),
        ({"LOG_FILE": "/proc/fortuna/django.log"}, "LOG_FILE '/proc/fortuna/django.log' cannot be written"),
    ],
)
def test_bad_environment_fails_manage_py_check_naming_the_variable(overrides, message):
    result = manage_check(**overrides)
    assert result.returncode != 0
    assert message in result.stderr
    assert SLACK_SECRET not in result.stderr  # a webhook URL is a secret: never repeated


def test_good_values_pass_manage_py_check():
    result = manage_check(THROTTLE_ANON="100/s", THROTTLE_USER="5000/hour", THROTTLE_AUTH="3/d",
                          FORTUNE_BATCH_DEADLINE="22:45", OPENAI_BASE_URL="http://127.0.0.1:9/v1",
                          SLACK_WEBHOOK_URL="https://hooks.slack.com/services/T/B/X", REDIS_URL="redis://127.0.0.1:6379/1",
                          CSRF_TRUSTED_ORIGINS="https://fortuna.example")
    assert result.returncode == 0, result.stderr


def test_a_model_without_a_price_fails_manage_py_check_naming_openai_model():
    openai = {"FORTUNE_PROVIDER": "openai", "OPENAI_API_KEY": "sk-test", "OPENAI_MODEL": "llama-3-8b"}
    result = manage_check(**openai)
    assert result.returncode != 0
    assert "fortuna.E001" in result.stderr and "OPENAI_MODEL: No price for model 'llama-3-8b'" in result.stderr
    flex = manage_check(**openai, FORTUNE_PRICES="llama-3-8b:standard=0/0", OPENAI_SERVICE_TIER="flex")
    assert flex.returncode != 0 and "on the flex tier" in flex.stderr
    priced = manage_check(**openai, FORTUNE_PRICES="llama-3-8b:standard=0/0")
    assert priced.returncode == 0, priced.stderr


DB_PROBE = ("import django; django.setup(); from django.conf import settings; "
            "o = settings.DATABASES['default']['OPTIONS']; "
            "print(o['connect_timeout'], o['keepalives'], o['keepalives_idle'], o['options'], "
            "settings.DB_RETRY_WINDOW, settings.DB_BATCH_STATEMENT_TIMEOUT_MS, "
            "settings.DATABASES['default']['ENGINE'])")


def test_postgresql_connections_get_a_connect_timeout_keepalives_and_a_statement_timeout():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    env |= {"DJANGO_SETTINGS_MODULE": "fortuna_api.settings", "DEBUG": "1", "SECRET_KEY": "",
            "DATABASE_URL": "postgres://u@h:5432/d?options=-c%20search_path%3Dfortuna"}
    result = subprocess.run([sys.executable, "-c", DB_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    # Production defaults; the URL's own options kept, ours after them.
    assert result.stdout.split() == ["5", "1", "30", "-c", "search_path=fortuna", "-c", "statement_timeout=15000",
                                     "60", "300000", "django.db.backends.postgresql"]  # Django's own backend

"""The deploy files Railway reads (issue 4, item 12): parsed, with the documented keys."""

import importlib
import runpy
import shlex
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from gunicorn.workers.gthread import ThreadWorker

from tests.deploy.server import BASE_DIR, procfile_argv, procfile_command

WEB_CONFIG = BASE_DIR / "railway.toml"
WORKER_CONFIG = BASE_DIR / "railway.worker.toml"
FILL_CONFIG = BASE_DIR / "railway.fill.toml"
PUSH_CONFIG = BASE_DIR / "railway.push.toml"


def _load(path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture
def web() -> dict:
    return _load(WEB_CONFIG)


@pytest.fixture
def worker() -> dict:
    return _load(WORKER_CONFIG)


def _commands(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def test_web_config_has_healthcheck_and_pre_deploy_migration(web):
    deploy = web["deploy"]

    assert deploy["healthcheckPath"] == "/healthz"
    assert isinstance(deploy["healthcheckTimeout"], int) and deploy["healthcheckTimeout"] > 0
    assert "python manage.py migrate --noinput" in _commands(deploy["preDeployCommand"])
    assert "collectstatic --noinput" in web["build"]["buildCommand"]


def test_web_config_is_not_a_cron_job(web):
    assert "cronSchedule" not in web.get("deploy", {})
    # Railpack starts the Procfile's web line; a startCommand here could drift from it.
    assert "startCommand" not in web.get("deploy", {})


def _cron_argv(command: str, *, env: dict[str, str]) -> list[str]:
    """What the cron's start command runs, through a real sh, with `python` replaced by a script that
    prints the arguments it was given (one a line)."""
    with tempfile.TemporaryDirectory() as tmp:
        fake = Path(tmp) / "python"
        fake.write_text('#!/bin/sh\nprintf "%s\\n" python "$@"\n')
        fake.chmod(0o755)
        done = subprocess.run(shlex.split(command), env={"PATH": f"{tmp}:/usr/bin:/bin", **env},
                              capture_output=True, text=True, timeout=10, check=True)
    return done.stdout.splitlines()


def _cron_options(argv: list[str]) -> dict:
    """The command's own parser on the cron's arguments: every flag is one it takes."""
    from core.management.commands.generate_daily_fortunes import Command

    parser = Command().create_parser("manage.py", "generate_daily_fortunes")
    return vars(parser.parse_args(argv[3:]))


def test_the_cron_uses_the_celery_backend_exactly_when_a_broker_is_set(worker):
    command = worker["deploy"]["startCommand"]
    threads = _cron_argv(command, env={})
    celery = _cron_argv(command, env={"CELERY_BROKER_URL": "redis://redis.railway.internal:6379/0"})
    assert "--backend" not in threads and _cron_options(threads)["backend"] == "threads"
    assert celery[:3] == ["python", "manage.py", "generate_daily_fortunes"]
    assert _cron_options(celery)["backend"] == "celery" and _cron_options(celery)["workers"] == 10
    assert _cron_argv(command, env={"CELERY_BROKER_URL": ""}) == threads  # set but empty: no broker


def test_worker_config_runs_the_batch_nightly_and_never_restarts(worker):
    deploy = worker["deploy"]

    assert deploy["cronSchedule"] == "0 13 * * *"  # 22:00 KST
    assert deploy["restartPolicyType"] == "NEVER"
    argv = _cron_argv(deploy["startCommand"], env={})
    assert argv[:3] == ["python", "manage.py", "generate_daily_fortunes"]
    assert "healthcheckPath" not in deploy  # a cron run serves no HTTP
    assert "preDeployCommand" not in deploy  # the web service owns migrations


def test_fill_config_is_a_second_run_before_kst_midnight_that_only_fills_gaps(worker):
    deploy = _load(FILL_CONFIG)["deploy"]
    minute, hour, *rest = deploy["cronSchedule"].split()
    assert rest == ["*", "*", "*"]
    nightly_minute, nightly_hour = (int(part) for part in worker["deploy"]["cronSchedule"].split()[:2])
    start = int(hour) * 60 + int(minute)  # minutes after 00:00 UTC
    threads = _cron_options(_cron_argv(deploy["startCommand"], env={}))
    celery = _cron_options(_cron_argv(deploy["startCommand"], env={"CELERY_BROKER_URL": "redis://r:6379/0"}))
    # After the nightly run's --max-runtime, and done before 15:00 UTC = 00:00 KST.
    assert nightly_hour * 60 + nightly_minute + _cron_options(_cron_argv(worker["deploy"]["startCommand"],
                                                                         env={}))["max_runtime"] < start
    assert start + threads["max_runtime"] <= 15 * 60
    assert int(minute) != 30  # the collect service's minute (railway.collect.toml)
    # The nightly command on the default date (tomorrow, catch-up first), no day-ahead submission.
    assert threads["date"] is None and threads["batch_ahead"] is False and not threads["force"]
    assert (threads["backend"], celery["backend"]) == ("threads", "celery")
    assert deploy["restartPolicyType"] == "NEVER"
    assert "healthcheckPath" not in deploy and "preDeployCommand" not in deploy


def test_push_config_runs_the_sender_every_five_minutes_and_never_restarts():
    from core.management.commands.send_fortune_notifications import Command

    deploy = _load(PUSH_CONFIG)["deploy"]
    assert deploy["cronSchedule"] == "*/5 * * * *"  # Railway's minimum interval
    assert deploy["restartPolicyType"] == "NEVER"
    assert "healthcheckPath" not in deploy and "preDeployCommand" not in deploy
    parser = Command().create_parser("manage.py", "send_fortune_notifications")
    threads = _cron_argv(deploy["startCommand"], env={})
    celery = _cron_argv(deploy["startCommand"], env={"CELERY_BROKER_URL": "redis://r:6379/0"})
    assert threads[:3] == ["python", "manage.py", "send_fortune_notifications"]
    assert vars(parser.parse_args(threads[3:]))["backend"] == "threads"
    assert vars(parser.parse_args(celery[3:]))["backend"] == "celery"


@pytest.mark.parametrize("path", [WEB_CONFIG, WORKER_CONFIG, FILL_CONFIG, PUSH_CONFIG],
                         ids=["web", "worker", "fill", "push"])
def test_numeric_settings_are_toml_integers(path):
    # Railway rejects strings for these ("Expected number, received string").
    deploy = _load(path)["deploy"]
    for key in ("healthcheckTimeout", "restartPolicyMaxRetries", "drainingSeconds", "overlapSeconds"):
        if key in deploy:
            assert type(deploy[key]) is int, key


@pytest.mark.parametrize("path", [WEB_CONFIG, WORKER_CONFIG, FILL_CONFIG, PUSH_CONFIG],
                         ids=["web", "worker", "fill", "push"])
def test_no_cron_table_anywhere(path):
    # `[[cron]]` (the original guide) is not Railway syntax and would be silently ignored.
    config = _load(path)
    assert "cron" not in config
    assert set(config) <= {"build", "deploy", "environments", "$schema"}


def test_procfile_web_line_starts_gunicorn_threaded_on_port():
    argv = shlex.split(procfile_command(process="web"))

    assert argv[0] == "gunicorn"
    assert argv[1] == "fortuna_api.wsgi:application"
    assert "0.0.0.0:$PORT" in argv
    assert argv[argv.index("--timeout") + 1] == "120"
    assert "--worker-class" not in argv  # gunicorn.conf.py's (stock gthread)
    assert "--workers" not in argv and "-w" not in argv  # the count comes from WEB_CONCURRENCY
    assert argv[argv.index("--config") + 1] == "gunicorn.conf.py"


def test_procfile_argv_expands_port():
    argv = procfile_argv(port=8123)

    assert "0.0.0.0:8123" in argv
    assert not any("$PORT" in arg for arg in argv)


def _gunicorn_conf(monkeypatch, path: str = "gunicorn.conf.py", **env: str) -> dict:
    for name in ("WEB_CONCURRENCY", "GUNICORN_THREADS", "PORT", "GUNICORN_BALANCED_WORKER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(BASE_DIR / path))


def test_gunicorn_conf_defaults(monkeypatch, settings):
    conf = _gunicorn_conf(monkeypatch)

    assert conf["worker_class"] == "gthread"  # stock: no hook on gthread internals unless asked for
    assert "pre_fork" not in conf
    assert conf["workers"] == 4
    assert conf["threads"] >= 8
    assert conf["timeout"] == 120
    # The on-demand budget must end before gunicorn kills the worker, and before Railway's SIGKILL.
    assert settings.FORTUNE_ON_DEMAND_TIMEOUT < conf["graceful_timeout"] < conf["timeout"]
    web_draining = _load(WEB_CONFIG)["deploy"]["drainingSeconds"]
    assert conf["graceful_timeout"] < web_draining
    assert conf["accesslog"] == "-"
    assert conf["control_socket_disable"] is True


def test_the_balanced_worker_is_the_bench_configs_only(monkeypatch):
    conf = _gunicorn_conf(monkeypatch, "bench/gunicorn.conf.py")

    module, _, name = conf["worker_class"].rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), name), ThreadWorker)  # gthread underneath
    assert (module, name) == ("bench.gunicorn_worker", "BalancedThreadWorker")
    assert callable(conf["pre_fork"])  # gives each worker its shared-memory slot
    production = _gunicorn_conf(monkeypatch)
    for key in ("workers", "threads", "timeout", "graceful_timeout", "keepalive", "control_socket_disable"):
        assert conf[key] == production[key], key  # otherwise production's own settings


@pytest.mark.parametrize("value", ["1", "0", "balanced"])
def test_production_gunicorn_is_stock_gthread_whatever_the_old_balanced_switch_says(monkeypatch, value):
    conf = _gunicorn_conf(monkeypatch, GUNICORN_BALANCED_WORKER=value)
    assert conf["worker_class"] == "gthread" and "pre_fork" not in conf


def test_gunicorn_conf_reads_web_concurrency_threads_and_port(monkeypatch):
    conf = _gunicorn_conf(monkeypatch, WEB_CONCURRENCY="2", GUNICORN_THREADS="3", PORT="9001")

    assert (conf["workers"], conf["threads"], conf["bind"]) == (2, 3, "0.0.0.0:9001")


def test_collect_config_is_an_hourly_batch_api_collect_off_the_nightly_minute():
    deploy = _load(BASE_DIR / "railway.collect.toml")["deploy"]
    argv = shlex.split(deploy["startCommand"])
    assert argv == ["python", "manage.py", "generate_daily_fortunes", "--collect-batches"]
    minute, hour, *rest = deploy["cronSchedule"].split()
    assert hour == "*" and rest == ["*", "*", "*"] and minute != "0"  # hourly, never at the 13:00 UTC start
    assert deploy["restartPolicyType"] == "NEVER"
    assert "preDeployCommand" not in deploy and "healthcheckPath" not in deploy


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WEB_CONCURRENCY", "many", "WEB_CONCURRENCY must be a whole number, got 'many'."),
        ("GUNICORN_THREADS", "0", "GUNICORN_THREADS must be between 1 and 1024, got 0."),
        ("PORT", "http", "PORT must be a whole number, got 'http'."),
    ],
)
def test_gunicorn_conf_refuses_a_bad_value_naming_it(monkeypatch, name, value, message):
    with pytest.raises(ImproperlyConfigured) as excinfo:
        _gunicorn_conf(monkeypatch, **{name: value})
    assert str(excinfo.value) == message

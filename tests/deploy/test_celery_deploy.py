"""The Celery worker's deploy files: the Procfile line and railway.celery.toml agree and start a
threads-pool worker of the project's app."""

import shlex
import tomllib

from tests.deploy.server import BASE_DIR, procfile_command

CELERY_CONFIG = BASE_DIR / "railway.celery.toml"


def _celery() -> dict:
    with CELERY_CONFIG.open("rb") as fh:
        return tomllib.load(fh)


def test_procfile_celeryworker_line_starts_a_threads_worker_of_the_app():
    argv = shlex.split(procfile_command(process="celeryworker"))
    assert argv[:4] == ["celery", "-A", "fortuna_api", "worker"]
    assert argv[argv.index("-P") + 1] == "threads"
    assert int(argv[argv.index("-c") + 1]) >= 2  # a chunk can start while another finishes


def test_railway_celery_service_runs_the_procfile_line_with_replicas_and_no_schedule():
    deploy = _celery()["deploy"]
    assert deploy["startCommand"] == procfile_command(process="celeryworker")
    assert deploy["numReplicas"] >= 1
    assert "cronSchedule" not in deploy  # a long-running service, not a cron job
    assert deploy["restartPolicyType"] == "ON_FAILURE"

"""PostgreSQL restarted (`pg_ctl restart -m fast`) mid-run with the Celery backend: the coordinator's
polls and the workers' chunk bookkeeping (claims, stores, heartbeats, finishes) reconnect and retry,
and the run completes. The broker is a redis-server of the test's own."""

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from core.nightly.executors.celery.chunks import STALE_SECONDS
from tests.faults.night import ROOT, Night

pytestmark = pytest.mark.subprocess

WORKER_THREADS = 2
READY_TIMEOUT = 60.0


RUN_TIMEOUT = STALE_SECONDS + 60


def _worker(night: Night, env: dict[str, str], log_path) -> subprocess.Popen:
    argv = [sys.executable, "-m", "celery", "-A", "fortuna_api", "worker", "-P", "threads", "-c", str(WORKER_THREADS),
            "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", f"fault-{uuid.uuid4().hex[:6]}@%h",
            "--loglevel", "INFO"]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=night.env(**env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None or " ready." in log_path.read_text():
            break
        time.sleep(0.1)
    assert proc.poll() is None and " ready." in log_path.read_text(), log_path.read_text()[-3000:]
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_postgresql_restart_mid_run_on_celery_workers_costs_a_pause_not_the_night(
        own_postgres, own_redis, stub_openai, webhook_receiver, tmp_path):
    stub_openai.configure(latency_ms=100)
    night = Night.create(own_postgres, stub_openai, webhook_receiver)
    eligible = night.eligible()
    env = {"CELERY_BROKER_URL": own_redis.url(), "FORTUNE_CELERY_QUEUE": f"fault-{uuid.uuid4().hex[:8]}",
           "DB_RETRY_WINDOW_SECONDS": "30"}
    worker = _worker(night, env, tmp_path / "worker.log")
    try:
        proc = night.start("--backend", "celery", "--chunk-size", "5", "--retry-cooldown", "0", env=env)
        night.wait_for(lambda: night.stored() >= 0.4 * eligible, what="40% of the users stored")
        assert proc.poll() is None and night.stored() < eligible  # the restart lands mid-run
        own_postgres.restart(mode="fast")
        try:
            # Bounded by the coordinator's stale cut-off (a chunk whose worker went silent is sent again)
            # plus the run itself on a loaded machine.
            code, out, err = night.finish(proc, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            raise AssertionError(
                f"the run did not finish within {RUN_TIMEOUT} s of the restart. Its log:\n"
                f"{(exc.stderr or b'').decode(errors='replace')[-3000:]}\nThe worker's log:\n"
                f"{(tmp_path / 'worker.log').read_text()[-5000:]}") from None
    finally:
        _stop(worker)
    worker_log = (tmp_path / "worker.log").read_text()
    assert code == 0, err + worker_log[-3000:]
    night.check(in_flight=WORKER_THREADS * 4)  # each worker thread's chunk keeps up to 4 calls in flight
    [(status, stop_reason, generated, failures)] = night.runs()
    assert (status, stop_reason, generated) == ("succeeded", "", eligible)
    assert "reconnecting" in err + worker_log

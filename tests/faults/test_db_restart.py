"""PostgreSQL restarted (`pg_ctl restart -m fast`) while the night runs (threads backend): every
database step reconnects and retries, the night lock is taken again, and the run completes."""

import pytest

from tests.faults.night import Night

pytestmark = pytest.mark.subprocess

WORKERS = 2


def test_a_postgresql_restart_at_40_percent_costs_a_pause_not_the_night(
        own_postgres, stub_openai, webhook_receiver):
    stub_openai.configure(latency_ms=100)
    night = Night.create(own_postgres, stub_openai, webhook_receiver)
    eligible = night.eligible()
    proc = night.start("--workers", str(WORKERS), env={"DB_RETRY_WINDOW_SECONDS": "30"})
    night.wait_for(lambda: night.stored() >= 0.4 * eligible, what="40% of the users stored")
    at_restart = night.stored()
    assert proc.poll() is None and at_restart < eligible  # the restart lands mid-run
    own_postgres.restart(mode="fast")

    code, out, err = night.finish(proc)
    assert code == 0, err
    night.check(in_flight=WORKERS)
    [(status, stop_reason, generated, failures)] = night.runs()
    assert (status, stop_reason, failures) == ("succeeded", "", [])
    assert generated == eligible
    # It did meet the restart: the broken connections were replaced, the lock taken again.
    assert "reconnecting" in err and "taken again on a new session" in err

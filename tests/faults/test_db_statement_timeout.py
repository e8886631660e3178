"""A lock held on the results table (a migration's, a stuck transaction's) mid-run: the batch's
statements hit statement_timeout, are retried within the window, then the run stops with a clear
error instead of hanging, keeping what it stored; a rerun once the lock is gone completes the night."""

import time

import psycopg2
import pytest

from core.management.commands.generate_daily_fortunes import EXIT_INCOMPLETE
from tests.faults.night import Night

pytestmark = pytest.mark.subprocess

WORKERS = 2
TIMEOUTS = {"DB_BATCH_STATEMENT_TIMEOUT_MS": "300", "DB_RETRY_WINDOW_SECONDS": "2"}
STOPS_WITHIN = 15.0  # seconds from the lock to the exit: the window, a statement timeout, start-up slack


def test_a_lock_held_past_the_statement_timeout_stops_the_run_with_a_clear_error_not_a_hang(
        own_postgres, stub_openai, webhook_receiver):
    stub_openai.configure(latency_ms=100)
    night = Night.create(own_postgres, stub_openai, webhook_receiver)
    eligible = night.eligible()
    proc = night.start("--workers", str(WORKERS), env=TIMEOUTS)
    night.wait_for(lambda: night.stored() >= 0.2 * eligible, what="20% of the users stored")
    migration = psycopg2.connect(night.url)
    try:
        with migration.cursor() as cursor:  # psycopg2 opens a transaction: the lock lasts until rollback
            cursor.execute("LOCK TABLE core_fortuneresult IN ACCESS EXCLUSIVE MODE")
        locked_at = time.monotonic()
        stored_before = night.value("SELECT count(*) FROM core_nightlyrun")  # any table but the locked one
        assert stored_before == 1
        code, out, err = night.finish(proc, timeout=STOPS_WITHIN * 2)
        elapsed = time.monotonic() - locked_at
    finally:
        migration.rollback()
        migration.close()
    assert code == EXIT_INCOMPLETE, err
    assert elapsed < STOPS_WITHIN
    last = err.strip().splitlines()[-1]
    assert "The database stayed unavailable" in last and "statement timeout" in last, last
    [(status, stop_reason, generated, _)] = night.runs()
    assert status == "failed" and "DatabaseUnavailable" in stop_reason
    kept = night.stored()
    assert 0 < generated == kept < eligible  # what was flushed before the lock stays
    unstored = night.requested_not_stored()

    code, out, err = night.finish(night.start("--workers", str(WORKERS), "--retry-cooldown", "0", env=TIMEOUTS))
    assert code == 0, err
    night.check(in_flight=unstored)

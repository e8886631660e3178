"""The night lock's session terminated (`pg_terminate_backend`) while another run takes the lock: the
first run notices at its next heartbeat or flush, stops, and writes nothing after; a rerun completes."""

import datetime as dt
import time

import psycopg2
import pytest

from core.management.commands.generate_daily_fortunes import EXIT_LOCKED
from core.nightly.lock import BATCH_LOCK_LOST, LOCK_TAKEN, lock_key
from tests.faults.night import Night
from tests.nightly.helpers import TARGET

pytestmark = pytest.mark.subprocess

WORKERS = 2
DETECTION_SLACK = dt.timedelta(milliseconds=500)  # a flush that checked the lock just before it was taken


def test_a_terminated_lock_session_taken_by_another_stops_the_run_and_nothing_is_written_after(
        own_postgres, stub_openai, webhook_receiver):
    stub_openai.configure(latency_ms=100)
    night = Night.create(own_postgres, stub_openai, webhook_receiver)
    eligible = night.eligible()
    first = night.start("--workers", str(WORKERS))
    night.wait_for(lambda: night.stored() >= 0.2 * eligible, what="20% of the users stored")
    assert first.poll() is None

    (holder,) = night.sql("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
    night.sql("SELECT pg_terminate_backend(%s)", holder)
    # "Another run" takes the lock the moment it is free: the test, on a session of its own.
    other = psycopg2.connect(night.url)
    other.autocommit = True
    try:
        with other.cursor() as cursor:
            deadline = time.monotonic() + 10
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s), clock_timestamp()", [lock_key(target_date=TARGET)])
                taken, taken_at = cursor.fetchone()
                if taken or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        assert taken
        code, out, err = night.finish(first)
        assert code == EXIT_LOCKED, err
        assert BATCH_LOCK_LOST.format(target_date=TARGET.isoformat(), why=LOCK_TAKEN) in err
        written_after = night.value("SELECT count(*) FROM core_fortuneresult WHERE for_date = %s AND created_at > %s",
                                    (TARGET, taken_at + DETECTION_SLACK))
        assert written_after == 0
        [(status, stop_reason, _, _)] = night.runs()
        assert status == "failed" and "NightlyLockLost" in stop_reason
        unstored = night.requested_not_stored()
    finally:
        other.close()  # the other "run" ends: its lock goes with its session

    code, out, err = night.finish(night.start("--workers", str(WORKERS), "--retry-cooldown", "0"))
    assert code == 0, err
    # Requests repeated by the rerun: only generations the stopped run made but never stored.
    night.check(in_flight=unstored)
    assert [run[0] for run in night.runs()] == ["failed", "succeeded"]

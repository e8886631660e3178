"""core.services.on_demand_lock: which lock a deployment gets, and how it is held and let go."""

import time

import pytest
from django.db import connection

from core.services.on_demand_lock import OnDemandLockTimeout, on_demand_lock, on_demand_lock_for
from tests.api.test_single_flight import lock_held_elsewhere

pytestmark = pytest.mark.django_db(transaction=True)


def _soon(seconds: float = 0.2) -> dict:
    return {"deadline": time.monotonic() + seconds, "clock": time.monotonic}


def test_without_a_shared_cache_the_lock_is_the_databases(uses_postgres):
    # The test settings have no REDIS_URL: a per-process cache.
    assert on_demand_lock_for("x").kind == ("advisory" if uses_postgres else "process")


def test_a_lock_held_elsewhere_times_out_and_is_free_once_released():
    with lock_held_elsewhere("input-a") as release:
        with pytest.raises(OnDemandLockTimeout):
            with on_demand_lock(name="input-a", **_soon()):
                pass
        with on_demand_lock(name="input-b", **_soon()):  # another name is not blocked
            pass
        release.set()
        with on_demand_lock(name="input-a", deadline=time.monotonic() + 5, clock=time.monotonic):
            pass


def test_the_advisory_lock_is_held_outside_a_transaction_and_released(uses_postgres):
    if not uses_postgres:
        pytest.skip("PostgreSQL's advisory lock")
    key = on_demand_lock_for("input-c").key
    held_sql = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
    with on_demand_lock(name="input-c", **_soon()):
        assert not connection.in_atomic_block
        with connection.cursor() as cursor:
            cursor.execute(held_sql)
            assert cursor.fetchone() == (1,)
            cursor.execute("SELECT objid::bigint | (classid::bigint << 32) FROM pg_locks "
                           "WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
            assert cursor.fetchone()[0] == key & 0xFFFFFFFFFFFFFFFF
    with connection.cursor() as cursor:
        cursor.execute(held_sql)
        assert cursor.fetchone() == (0,)


def test_an_advisory_lock_that_cannot_be_unlocked_is_dropped_with_its_session(uses_postgres):
    if not uses_postgres:
        pytest.skip("PostgreSQL's advisory lock")
    with on_demand_lock(name="input-d", **_soon()):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock_all()")  # the explicit unlock will find nothing
    # Closed rather than kept: a persistent session must never keep a lock it could not release.
    assert connection.connection is None

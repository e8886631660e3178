import datetime as dt
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from core.models import NightlyRun
from core.nightly.lock import (
    BATCH_LOCK_LOST,
    BATCH_LOCKED,
    LOCK_RUN_SINCE,
    LOCK_TAKEN,
    NightlyLocked,
    NightlyLockLost,
    lock_file_path,
    lock_is_held,
    lock_key,
    nightly_lock,
    nightly_lock_verify,
)

pytestmark = pytest.mark.django_db
# Tests with a second process: it must see a real, committed database.
in_two_processes = pytest.mark.django_db(transaction=True)

DATE = dt.date(2030, 3, 4)
OTHER_DATE = dt.date(2030, 3, 5)
EXIT_LOCKED = 3

# A second process, set up like the batch command, against this test's database.
HOLDER = r"""
import datetime as dt, sys
import django
django.setup()
from django.db import connections
connections["default"].settings_dict["NAME"] = sys.argv[1]
from core.nightly.lock import NightlyLocked, nightly_lock
try:
    with nightly_lock(target_date=dt.date.fromisoformat(sys.argv[2])):
        print("locked", flush=True)
        if sys.argv[3] == "hold":
            sys.stdin.readline()
except NightlyLocked as exc:
    print(exc, file=sys.stderr, flush=True)
    sys.exit(3)
"""


def spawn(target_date: dt.date, mode: str) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, connection.settings_dict["NAME"], target_date.isoformat(), mode],
        cwd=settings.BASE_DIR,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen, timeout: float = 60.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the holder process said nothing"
    return proc.stdout.readline().strip()


def wait_until_free(target_date: dt.date, timeout: float = 10.0) -> bool:
    # PostgreSQL ends a dead client's session (and its locks) once it sees the socket close.
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not lock_is_held(target_date=target_date):
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def holder():
    procs = []

    def start(target_date: dt.date = DATE) -> subprocess.Popen:
        proc = spawn(target_date, "hold")
        procs.append(proc)
        line = read_line(proc)
        assert line == "locked", proc.stderr.read() if proc.poll() is not None else line
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_lock_key_is_stable_and_differs_by_date():
    assert lock_key(target_date=DATE) == lock_key(target_date=dt.date(2030, 3, 4))
    assert lock_key(target_date=DATE) != lock_key(target_date=OTHER_DATE)
    assert -(2**63) <= lock_key(target_date=DATE) < 2**63
    assert lock_key(target_date=dt.date(2030, 1, 1)) == -5971024944550134702


def test_a_second_holder_in_the_same_process_is_refused_with_the_date():
    with nightly_lock(target_date=DATE):
        with pytest.raises(NightlyLocked) as caught:
            with nightly_lock(target_date=DATE):
                pytest.fail("entered a held lock")
        assert str(caught.value) == BATCH_LOCKED.format(target_date="2030-03-04")
        assert caught.value.target_date == DATE
        assert lock_is_held(target_date=DATE)
    assert not lock_is_held(target_date=DATE)


def test_the_lock_is_released_when_the_block_raises():
    with pytest.raises(RuntimeError):
        with nightly_lock(target_date=DATE):
            raise RuntimeError("boom")
    with nightly_lock(target_date=DATE):
        pass


def test_different_dates_do_not_conflict():
    with nightly_lock(target_date=DATE), nightly_lock(target_date=OTHER_DATE):
        assert lock_is_held(target_date=DATE) and lock_is_held(target_date=OTHER_DATE)


def test_lock_is_held_does_not_take_the_lock():
    assert not lock_is_held(target_date=DATE)
    assert not lock_is_held(target_date=DATE)
    with nightly_lock(target_date=DATE):
        pass


@in_two_processes
def test_another_process_holding_the_lock_refuses_us_at_once_until_it_exits(holder):
    proc = holder(DATE)
    with pytest.raises(NightlyLocked):
        with nightly_lock(target_date=DATE):
            pytest.fail("entered a lock another process holds")
    assert lock_is_held(target_date=DATE)
    with nightly_lock(target_date=OTHER_DATE):  # another date is free meanwhile
        pass

    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0
    assert wait_until_free(DATE)
    with nightly_lock(target_date=DATE):
        pass


@in_two_processes
def test_a_sigkilled_holder_leaves_no_stale_lock(holder):
    proc = holder(DATE)
    assert lock_is_held(target_date=DATE)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert wait_until_free(DATE)
    with nightly_lock(target_date=DATE):
        pass


@in_two_processes
def test_another_process_is_refused_while_we_hold_the_lock():
    with nightly_lock(target_date=DATE):
        proc = spawn(DATE, "try")
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_LOCKED, err
    assert "locked" not in out
    assert BATCH_LOCKED.format(target_date="2030-03-04") in err

    proc = spawn(DATE, "try")  # released: the next one gets it
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "locked"


def test_sqlite_lock_files_sit_next_to_the_database_or_in_the_temp_dir(tmp_path):
    db = tmp_path / "db.sqlite3"
    assert lock_file_path(settings_dict={"NAME": str(db)}, target_date=DATE) == Path(
        f"{db}-batch-2030-03-04.lock"
    )
    memory = lock_file_path(settings_dict={"NAME": ":memory:"}, target_date=DATE)
    shared_memory = lock_file_path(
        settings_dict={"NAME": "file:memorydb_default?mode=memory&cache=shared"}, target_date=DATE
    )
    for path in (memory, shared_memory):
        assert path.parent == Path(tempfile.gettempdir())
        assert path.name.endswith("-batch-2030-03-04.lock")
    assert memory != shared_memory


def test_the_lock_is_a_postgres_advisory_lock_or_an_sqlite_lock_file():
    key = lock_key(target_date=DATE)
    with nightly_lock(target_date=DATE):
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                    " AND ((classid::bigint << 32) | objid::bigint) = %s",
                    [key],
                )
                assert cursor.fetchone()[0] == 1
        else:
            path = lock_file_path(settings_dict=connection.settings_dict, target_date=DATE)
            assert path.read_text().strip() == str(os.getpid())


# --- a lock whose session ends under the run (PostgreSQL) ------------------------------------------

on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="advisory locks are PostgreSQL's")


def _terminate_lock_session(target_date: dt.date) -> None:
    with connection.cursor() as cursor:
        # Only this test database's lock holders: the server is shared, and another suite's sessions
        # (an on-demand advisory lock, say) must never be ended by this test.
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                       "AND pid <> pg_backend_pid() "
                       "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
    time.sleep(0.1)  # the server ends the session and writes its goodbye


@on_postgresql
@in_two_processes
def test_a_lock_whose_session_ended_is_taken_again_when_nobody_else_took_it():
    with nightly_lock(target_date=DATE):
        nightly_lock_verify(target_date=DATE)  # quiet session: nothing to do
        _terminate_lock_session(DATE)
        nightly_lock_verify(target_date=DATE)
        holder = spawn(DATE, "once")
        assert holder.wait(timeout=60) == EXIT_LOCKED  # held again, on the new session
    assert not lock_is_held(target_date=DATE)


@on_postgresql
@in_two_processes
def test_a_lock_whose_session_ended_and_another_took_is_lost_for_good():
    with nightly_lock(target_date=DATE):
        _terminate_lock_session(DATE)
        holder = spawn(DATE, "hold")
        try:
            assert read_line(holder) == "locked"
            message = BATCH_LOCK_LOST.format(target_date=DATE.isoformat(), why=LOCK_TAKEN)
            for _ in range(2):  # and it stays lost
                with pytest.raises(NightlyLockLost) as lost:
                    nightly_lock_verify(target_date=DATE)
                assert str(lost.value) == message
        finally:
            holder.stdin.close()
            holder.wait(timeout=60)


@on_postgresql
@in_two_processes
def test_a_lock_whose_session_ended_while_another_run_came_and_went_is_lost():
    with nightly_lock(target_date=DATE):
        _terminate_lock_session(DATE)
        NightlyRun.objects.create(base_date=DATE - dt.timedelta(days=1), target_date=DATE, pid=os.getpid() + 1)
        with pytest.raises(NightlyLockLost, match=LOCK_RUN_SINCE):
            nightly_lock_verify(target_date=DATE)

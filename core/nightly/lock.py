"""One nightly run per target date: a non-blocking lock the operating system or the database frees
when the holder dies, so a crashed run never leaves a stale lock behind.

PostgreSQL: a session-level advisory lock. SQLite (and anything else): flock() on a file next to
the database file. Both are taken on a connection / file description of their own, so the lock
survives the run closing or replacing its ORM connection, and a second attempt from the same
process is refused like one from another process.

A PostgreSQL session can end under a live run (a server restart, pg_terminate_backend, a network
drop), and its advisory lock with it. nightly_lock_verify(), called with every heartbeat and before
every flush, notices (for free while the lock's socket is quiet) and takes the lock again on a new
session, but only when nobody else took it meanwhile: no other holder now, and no run for the date
started since this one locked it. Otherwise it raises NightlyLockLost, and the run writes nothing more.
"""

import datetime as dt
import fcntl
import hashlib
import logging
import os
import select
import socket
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, connections
from django.utils import timezone

from core.models import NightlyRun
from core.resilience import db_call, db_retryable

logger = logging.getLogger("fortuna.nightly")

LOCK_NAMESPACE = "fortuna:generate_daily_fortunes"
BATCH_LOCKED = (
    "Another generate_daily_fortunes run is active for target date {target_date} "
    "(it holds the batch lock); this run exits without doing anything."
)


BATCH_LOCK_LOST = (
    "The batch lock for target date {target_date} was lost (its database session ended) and {why}: "
    "this run stopped and writes nothing more. Run the command again once no other run is active."
)
LOCK_TAKEN = "another run holds it now"
LOCK_RUN_SINCE = "another run for that date started since"


class NightlyLocked(Exception):
    def __init__(self, target_date: dt.date) -> None:
        super().__init__(BATCH_LOCKED.format(target_date=target_date.isoformat()))
        self.target_date = target_date


class NightlyLockLost(NightlyLocked):
    """The run's lock ended under it and another run may have taken over: stop, write nothing more."""

    def __init__(self, target_date: dt.date, *, why: str) -> None:
        Exception.__init__(self, BATCH_LOCK_LOST.format(target_date=target_date.isoformat(), why=why))
        self.target_date = target_date


def lock_key(*, target_date: dt.date) -> int:
    """A signed 64-bit advisory-lock key, stable across processes and Python versions."""
    digest = hashlib.sha256(f"{LOCK_NAMESPACE}:{target_date.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_file_path(*, settings_dict: dict, target_date: dt.date) -> Path:
    name = str(settings_dict.get("NAME") or "")
    # "-batch-" keeps the file under the *.sqlite3-* ignore rule and `make clean`, like -wal and -shm.
    suffix = f"-batch-{target_date.isoformat()}.lock"
    if not name or name == ":memory:" or "mode=memory" in name:
        # No file to sit next to: a per-database name in the temp dir still keeps dates apart.
        tag = hashlib.sha256(name.encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"fortuna-{tag}{suffix}"
    return Path(f"{name}{suffix}")


def _is_postgres(alias: str) -> bool:
    return connections[alias].vendor == "postgresql"


def _new_connection(alias: str):
    base = connections[alias]
    # A private wrapper: same settings (the test database's too), its own session.
    return base.__class__(dict(base.settings_dict), alias)


def _quiet(conn) -> bool:
    """The lock's session is open and the server has said nothing on it (PostgreSQL writes to an idle
    session only to end it, or for a notice): no round trip needed to know the lock is still held."""
    psycopg = conn.connection
    if psycopg is None or psycopg.closed:
        return False
    poller = select.poll()
    poller.register(psycopg.fileno(), select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


def _try_lock(conn, key: int) -> bool:
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
        (acquired,) = cursor.fetchone()
    return bool(acquired)


@dataclass(eq=False)
class _PgLock:
    """A held advisory lock: its own session, and what verify() needs to take it again safely."""

    target_date: dt.date
    alias: str
    key: int
    conn: object
    acquired_at: dt.datetime = field(default_factory=timezone.now)
    guard: threading.Lock = field(default_factory=threading.Lock)
    lost: str = ""

    def verify(self) -> None:
        # The writer thread and the main thread both verify: one at a time, on the shared session.
        with self.guard:
            if self.lost:
                raise NightlyLockLost(self.target_date, why=self.lost)
            if _quiet(self.conn):
                return
            session = self.conn.connection
            try:
                with self.conn.cursor() as cursor:
                    cursor.execute("SELECT 1")
                if self.conn.connection is session:
                    return  # the server only sent a notice: the session, and the lock, are still there
            except Exception as exc:
                if not db_retryable(exc):
                    raise
                logger.warning("nightly run lock for %s: its session ended (%s); taking it again",
                               self.target_date, str(exc).strip())
            self._take_again()

    def _take_again(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - the session is gone already
            self.conn.connection = None

        def take() -> bool:
            try:
                return _try_lock(self.conn, self.key)
            except Exception:
                self.conn.close()
                raise

        if not db_call(take, what="taking the batch lock again"):
            self.lost = LOCK_TAKEN
        elif _run_started_since(target_date=self.target_date, since=self.acquired_at):
            self.lost = LOCK_RUN_SINCE
        if self.lost:
            logger.error("nightly run lock for %s lost: %s", self.target_date, self.lost)
            raise NightlyLockLost(self.target_date, why=self.lost)
        logger.warning("nightly run lock for %s taken again on a new session", self.target_date)


def _run_started_since(*, target_date: dt.date, since: dt.datetime) -> bool:
    """Another process started a run for target_date after `since` (it must have held the lock)."""
    me = dict(pid=os.getpid(), hostname=socket.gethostname()[:255])
    return db_call(lambda: NightlyRun.objects.filter(target_date=target_date, started_at__gte=since)
                   .exclude(**me).exists(), what="checking the runs started while the lock was lost")


_held: dict[tuple[str, dt.date], _PgLock] = {}


@contextmanager
def _pg_lock(*, target_date: dt.date, alias: str) -> Iterator[None]:
    key = lock_key(target_date=target_date)
    conn = _new_connection(alias)
    conn.inc_thread_sharing()  # verified from the writer thread too, under _PgLock.guard
    try:
        if not _try_lock(conn, key):
            raise NightlyLocked(target_date)
        held = _held[(alias, target_date)] = _PgLock(target_date=target_date, alias=alias, key=key, conn=conn)
        try:
            yield
        finally:
            del _held[(alias, target_date)]
            if not held.lost:
                try:
                    with conn.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
                except Exception:
                    # Closing the session below releases it anyway.
                    logger.warning("nightly run lock: explicit unlock failed for %s", target_date, exc_info=True)
    finally:
        try:
            conn.close()
        finally:
            conn.dec_thread_sharing()


def nightly_lock_verify(*, target_date: dt.date, using: str = DEFAULT_DB_ALIAS) -> None:
    """Raise NightlyLockLost if this process held the lock for target_date and lost it to someone else
    (see the module docstring). No-op where no PostgreSQL lock is held here: a file lock cannot be
    lost while the process lives."""
    held = _held.get((using, target_date))
    if held is not None:
        held.verify()


@contextmanager
def _file_lock(*, target_date: dt.date, alias: str) -> Iterator[None]:
    path = lock_file_path(settings_dict=connections[alias].settings_dict, target_date=target_date)
    # The file stays on disk: unlinking a lock file races with a process that just opened it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise NightlyLocked(target_date) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def nightly_lock(*, target_date: dt.date, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Hold the run lock for target_date, or raise NightlyLocked at once if anyone else holds it."""
    impl = _pg_lock if _is_postgres(using) else _file_lock
    with impl(target_date=target_date, alias=using):
        logger.debug("nightly run lock acquired for %s", target_date)
        yield


def lock_is_held(*, target_date: dt.date, using: str = DEFAULT_DB_ALIAS) -> bool:
    """True when some holder (this process included) has the lock for target_date right now."""
    try:
        with nightly_lock(target_date=target_date, using=using):
            return False
    except NightlyLocked:
        return True

"""One nightly run per target date: a non-blocking lock the operating system or the database frees
when the holder dies, so a crashed run never leaves a stale lock behind.

PostgreSQL: a session-level advisory lock. SQLite (and anything else): flock() on a file next to
the database file. Both are taken on a connection / file description of their own, so the lock
survives the run closing or replacing its ORM connection, and a second attempt from the same
process is refused like one from another process.
"""

import datetime as dt
import fcntl
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger("fortuna.batch")

LOCK_NAMESPACE = "fortuna:generate_daily_fortunes"
BATCH_LOCKED = (
    "Another generate_daily_fortunes run is active for target date {target_date} "
    "(it holds the batch lock); this run exits without doing anything."
)


class BatchLocked(Exception):
    def __init__(self, target_date: dt.date) -> None:
        super().__init__(BATCH_LOCKED.format(target_date=target_date.isoformat()))
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


@contextmanager
def _pg_lock(*, target_date: dt.date, alias: str) -> Iterator[None]:
    key = lock_key(target_date=target_date)
    conn = _new_connection(alias)
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            (acquired,) = cursor.fetchone()
        if not acquired:
            raise BatchLocked(target_date)
        try:
            yield
        finally:
            try:
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except Exception:
                # Closing the session below releases it anyway.
                logger.warning("fortune batch lock: explicit unlock failed for %s", target_date, exc_info=True)
    finally:
        conn.close()


@contextmanager
def _file_lock(*, target_date: dt.date, alias: str) -> Iterator[None]:
    path = lock_file_path(settings_dict=connections[alias].settings_dict, target_date=target_date)
    # The file stays on disk: unlinking a lock file races with a process that just opened it.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BatchLocked(target_date) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def batch_lock(*, target_date: dt.date, using: str = DEFAULT_DB_ALIAS) -> Iterator[None]:
    """Hold the run lock for target_date, or raise BatchLocked at once if anyone else holds it."""
    impl = _pg_lock if _is_postgres(using) else _file_lock
    with impl(target_date=target_date, alias=using):
        logger.debug("fortune batch lock acquired for %s", target_date)
        yield


def lock_is_held(*, target_date: dt.date, using: str = DEFAULT_DB_ALIAS) -> bool:
    """True when some holder (this process included) has the lock for target_date right now."""
    try:
        with batch_lock(target_date=target_date, using=using):
            return False
    except BatchLocked:
        return True

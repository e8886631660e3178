"""Store batch output: generations once per input hash, then one result row per user — in bulk.

Both writes are INSERT … ON CONFLICT, so a rerun or a concurrent on-demand generation never
duplicates a row, and neither issues a query per user. How the rows travel is core.nightly.bulk's
business (PostgreSQL's COPY path, or the plain ORM elsewhere).

ResultWriter runs those flushes on a thread of its own, so the batch keeps generating while the
database writes. Each flush is one transaction, retried after a reconnect (core.resilience.db_call)
while the database restarts, and written only while the run still holds its lock: a flush that
fails past the retry window stops the run with every earlier flush kept.
"""

import datetime as dt
import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db import IntegrityError, connection, transaction

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Generated
from core.models import FortuneResult
from core.nightly.bulk import (
    ResultRow,
    ResultsWritten,
    bulk_for_connection,
    concurrent_writer_supported,
    natal_key_of_input,
)
from core.nightly.lock import nightly_lock_verify
from core.resilience import db_call

logger = logging.getLogger("fortuna.nightly")

WRITER_QUEUE = 2  # flushes waiting for the writer thread: bounds memory when the database lags
WRITER_GONE = "nightly run writer thread ended with flushes outstanding"


@dataclass(frozen=True, slots=True)
class GeneratedItem:
    inp: GenerationInput
    hash: str
    generated: Generated


def generation_ids_by_hash(*, hashes: Iterable[str]) -> dict[str, int]:
    """hash -> id of the stored generations among hashes."""
    hashes = list(hashes)
    return db_call(lambda: bulk_for_connection().generation_ids(hashes=hashes), what="looking up stored generations")


def stored_lookup(hashes: Iterable[str]) -> dict[str, int]:
    """The engine's "already stored?" lookup (scheduler.Lookup), for every run of it."""
    return generation_ids_by_hash(hashes=hashes)


def generations_store_many(
    *, items: Sequence[GeneratedItem], provider: str, model: str, copy_text: str | None = None
) -> dict[str, int]:
    """Insert the generations whose hash is new; return hash -> id for every item.

    copy_text: what the bulk implementation prepared for these items already (writer_prepare).
    """
    if not items:
        return {}
    ids = bulk_for_connection().generations_insert(items=items, provider=provider, model=model, prepared=copy_text)
    missing = [item.hash for item in items if item.hash not in ids]
    if missing:
        ids.update(generation_ids_by_hash(hashes=missing))
    return ids


def fortune_results_write_many(
    *, pairs: Sequence[ResultRow], for_date: dt.date, replace: bool = False,
    source: str = FortuneResult.Source.BATCH,
) -> ResultsWritten:
    """Insert result rows for for_date: (user_id, generation_id), or with the natal key the user was
    planned with as a third element. Users deleted, no longer eligible or (given a key) whose birth
    data changed since are skipped and listed in the answer.

    replace=False never touches an existing row (a user may already have read it); replace=True
    (--force) points existing rows at the new generation.
    """
    if not pairs:
        return ResultsWritten()
    return bulk_for_connection().results_insert(pairs=pairs, for_date=for_date, replace=replace, source=str(source))


@dataclass(slots=True)
class FlushWritten:
    ids: dict[str, int]  # hash -> id of the stored generations
    results: ResultsWritten


def nightly_output_write(
    *, items: Sequence[GeneratedItem], reused: Sequence[ResultRow], waiting: dict[str, list[int]],
    for_date: dt.date, provider: str, model: str, replace: bool = False, copy_text: str | None = None,
) -> FlushWritten:
    """One flush, in one transaction: new generations, then the results pointing at them.

    reused: result rows whose generation is already stored (ResultRow); waiting: hash -> user ids
    whose generation is among items (checked against that item's natal key).
    """
    keys = {item.hash: natal_key_of_input(item.inp) for item in items}
    with transaction.atomic():
        bulk_for_connection().flush_begin()
        ids = generations_store_many(items=items, provider=provider, model=model, copy_text=copy_text)
        pairs = list(reused)
        for digest, user_ids in waiting.items():
            generation_id, key = ids[digest], keys.get(digest)
            pairs.extend((user_id, generation_id, key) for user_id in user_ids)
        results = fortune_results_write_many(pairs=pairs, for_date=for_date, replace=replace)
    return FlushWritten(ids=ids, results=results)


def nightly_output_store(
    *, items: Sequence[GeneratedItem], reused: Sequence[ResultRow], waiting: dict[str, list[int]],
    for_date: dt.date, provider: str, model: str, replace: bool = False, copy_text: str | None = None,
) -> tuple[dict[str, int], int]:
    """nightly_output_write, answering (hash -> id of the stored generations, results written)."""
    written = nightly_output_write(items=items, reused=reused, waiting=waiting, for_date=for_date, provider=provider,
                                 model=model, replace=replace, copy_text=copy_text)
    return written.ids, written.results.stored


def writer_threaded() -> bool:
    """Whether ResultWriter should write on a thread of its own here: a database that takes a writer
    beside readers, and no outer transaction (whose uncommitted rows another connection cannot see)."""
    return concurrent_writer_supported() and not connection.in_atomic_block


@dataclass(slots=True)
class Flush:
    """One nightly_output_store call; ids and stored are filled in once it is written."""

    items: list[GeneratedItem]
    reused: list[ResultRow]
    waiting: dict[str, list[int]]
    ids: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    gone: list[int] = field(default_factory=list)  # users skipped: deleted or no longer eligible
    changed: list[int] = field(default_factory=list)  # users skipped: birth data changed since planning
    copy_text: str | None = None


class ResultWriter:
    """Writes flushes in order, each in its own transaction, on one thread with its own connection.

    threaded=False writes inline on the caller's thread instead: for SQLite (one writer at a time)
    and for callers inside a transaction, whose uncommitted rows another connection cannot see.
    submit() blocks while WRITER_QUEUE flushes wait, so memory stays bounded; a writer failure is
    raised by the next submit(), done() or close() — never swallowed, never a hang.
    """

    def __init__(self, *, for_date: dt.date, provider: str, model: str, replace: bool, threaded: bool) -> None:
        self.for_date = for_date
        self._store = dict(for_date=for_date, provider=provider, model=model, replace=replace)
        self._done: queue.SimpleQueue[Flush] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.outstanding = 0  # submitted, not yet returned by done()
        self._thread: threading.Thread | None = None
        if threaded:
            self._todo: queue.Queue[Flush | None] = queue.Queue(maxsize=WRITER_QUEUE)
            self._thread = threading.Thread(target=self._work, name="fortune-writer", daemon=True)
            self._thread.start()

    def _write(self, flush: Flush) -> None:
        def write() -> FlushWritten:
            # Checked before every attempt: once another run may own the date, nothing more is written.
            nightly_lock_verify(target_date=self.for_date)
            return nightly_output_write(items=flush.items, reused=flush.reused, waiting=flush.waiting,
                                      copy_text=flush.copy_text, **self._store)

        # IntegrityError too: a user deleted between the check and the commit fails the foreign key
        # once; the next attempt's check skips them.
        written = db_call(write, what="storing a flush of fortunes", also_retry=(IntegrityError,))
        flush.ids, flush.stored = written.ids, written.results.stored
        flush.gone, flush.changed = written.results.gone, written.results.changed
        flush.copy_text = None
        self._done.put(flush)

    def _work(self) -> None:
        try:
            while (flush := self._todo.get()) is not None:
                if self.error is None:  # after a failure, only drain so that no put() blocks forever
                    try:
                        self._write(flush)
                    except BaseException as exc:
                        logger.exception("nightly run writer: a flush failed")
                        self.error = exc
        finally:
            connection.close()  # this thread's own connection

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, flush: Flush) -> None:
        self._raise()
        self.outstanding += 1
        if self._thread is None:
            self._write(flush)
            return
        if flush.items:
            # Serialise here, on the caller's thread: the writer thread then spends its time waiting
            # on the database with the GIL released, so both keep working.
            flush.copy_text = bulk_for_connection().generations_prepare(items=flush.items)
        while True:
            try:
                self._todo.put(flush, timeout=0.1)
                return
            except queue.Full:
                self._raise()

    def done(self, *, wait: bool = False) -> list[Flush]:
        """Flushes written since the last call; wait=True waits for every submitted one."""
        finished = []
        while self.outstanding:
            try:
                flush = self._done.get(timeout=0.1) if wait else self._done.get_nowait()
            except queue.Empty:
                self._raise()
                if not wait:
                    break
                if self._thread is not None and not self._thread.is_alive():
                    raise RuntimeError(WRITER_GONE) from None
                continue
            self.outstanding -= 1
            finished.append(flush)
        self._raise()
        return finished

    def close(self) -> None:
        """Write what is queued, then stop the thread (idempotent; raises nothing)."""
        if self._thread is not None and self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()

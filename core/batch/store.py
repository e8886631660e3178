"""Store batch output: generations once per input hash, then one result row per user — in bulk.

Both writes are INSERT … ON CONFLICT, so a rerun or a concurrent on-demand generation never
duplicates a row, and neither issues a query per user. On PostgreSQL the rows travel by COPY into a
temporary staging table, then one INSERT … SELECT moves them (building a multi-row VALUES list
client-side cost more than the database's whole insert); SQLite gets multi-row INSERTs.

BatchWriter runs those flushes on a thread of its own, so the batch keeps generating while the
database writes.
"""

import datetime as dt
import io
import logging
import queue
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db import connection, transaction
from django.utils import timezone

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Generated
from core.models import FortuneGeneration, FortuneResult

logger = logging.getLogger("fortuna.batch")

INSERT_BATCH = 2000
LOOKUP_BATCH = 2000
WRITER_QUEUE = 2  # flushes waiting for the writer thread: bounds memory when the database lags
WRITER_GONE = "fortune batch writer thread ended with flushes outstanding"

_GEN_STAGE = "fortune_generation_stage"
_RESULT_STAGE = "fortune_result_stage"
# Per connection; ON COMMIT DELETE ROWS frees it between flushes, TRUNCATE covers flushes nested in
# an outer transaction (tests, or a caller's atomic block) where no commit happens in between.
_STAGE_DDL = {
    _GEN_STAGE: "input_hash varchar(64), for_date date, content jsonb, tokens_in integer, tokens_out integer",
    _RESULT_STAGE: "user_id bigint, generation_id bigint",
}
# COPY text format: backslash first, then the characters that would end a field or a row.
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


@dataclass(frozen=True, slots=True)
class GeneratedItem:
    inp: GenerationInput
    hash: str
    generated: Generated


def generation_ids_by_hash(*, hashes: Iterable[str]) -> dict[str, int]:
    """hash -> id of the stored generations among hashes.

    Raw SQL: the ORM's per-parameter handling of a 2,000-item IN list cost more than the query. On
    PostgreSQL one array parameter (= ANY) takes a whole page of hashes.
    """
    hashes = list(hashes)
    table = connection.ops.quote_name(FortuneGeneration._meta.db_table)
    found: dict[str, int] = {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"SELECT input_hash, id FROM {table} WHERE input_hash = ANY(%s)", [hashes])
            return dict(cursor.fetchall())
        for start in range(0, len(hashes), LOOKUP_BATCH):
            chunk = hashes[start : start + LOOKUP_BATCH]
            cursor.execute(f"SELECT input_hash, id FROM {table} WHERE input_hash IN ({', '.join(['%s'] * len(chunk))})",
                           chunk)
            found.update(cursor.fetchall())
    return found


def _copy_field(value) -> str:
    if value is None:
        return "\\N"
    text = str(value)
    for char, escaped in _COPY_ESCAPES:
        if char in text:
            text = text.replace(char, escaped)
    return text


def _copy_text(rows: Iterable[Sequence]) -> str:
    return "".join("\t".join(map(_copy_field, row)) + "\n" for row in rows)


def _copy_into_stage(cursor, *, stage: str, text: str) -> None:
    """Replace the staging table's rows with text's (PostgreSQL COPY, text format)."""
    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ({_STAGE_DDL[stage]}) ON COMMIT DELETE ROWS; "
                   f"TRUNCATE {stage}")
    cursor.cursor.copy_expert(f"COPY {stage} FROM STDIN", io.StringIO(text))


def generations_copy_text(*, items: Sequence[GeneratedItem]) -> str:
    """The generations' staging rows for PostgreSQL (content serialised here: the costly part)."""
    return _copy_text(
        (item.hash, item.inp.for_date.isoformat(), item.generated.content.model_dump_json(),
         item.generated.tokens_in, item.generated.tokens_out) for item in items
    )


def _insert_values(
    *, model, columns: Sequence[str], rows: Sequence[tuple], tail: str, returning: bool = False
) -> tuple[list, int]:
    """Multi-row INSERT … tail (SQLite): (the RETURNING rows if returning, the rows written)."""
    qn = connection.ops.quote_name
    fields = [model._meta.get_field(name.removesuffix("_id")) for name in columns]
    per_row = "(" + ", ".join(["%s"] * len(columns)) + ")"
    head = f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(name) for name in columns)}) VALUES "
    batch = max(1, min(INSERT_BATCH, connection.ops.bulk_batch_size(fields, rows)))
    returned: list = []
    written = 0
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            cursor.execute(head + ", ".join([per_row] * len(chunk)) + " " + tail,
                           [value for row in chunk for value in row])
            if returning:
                chunk_rows = cursor.fetchall()
                returned.extend(chunk_rows)
                written += len(chunk_rows)
            else:
                written += max(cursor.rowcount, 0)
    return returned, written


def _db_value(model, name: str, value):
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def generations_store_many(
    *, items: Sequence[GeneratedItem], provider: str, model: str, copy_text: str | None = None
) -> dict[str, int]:
    """Insert the generations whose hash is new; return hash -> id for every item.

    copy_text: generations_copy_text(items=items), if the caller built it already (PostgreSQL).
    """
    if not items:
        return {}
    table = connection.ops.quote_name(FortuneGeneration._meta.db_table)
    now = _db_value(FortuneGeneration, "created_at", timezone.now())
    # RETURNING gives the ids of the rows inserted; only hashes that already existed (rare: planning
    # skips stored inputs) need a look-up afterwards.
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            if copy_text is None:
                copy_text = generations_copy_text(items=items)
            _copy_into_stage(cursor, stage=_GEN_STAGE, text=copy_text)
            cursor.execute(
                f"INSERT INTO {table} (input_hash, for_date, content, provider, model, tokens_in, tokens_out, "
                f"created_at) SELECT input_hash, for_date, content, %s, %s, tokens_in, tokens_out, %s "
                f"FROM {_GEN_STAGE} ON CONFLICT (input_hash) DO NOTHING RETURNING input_hash, id",
                [provider, model, now],
            )
            ids = dict(cursor.fetchall())
    else:
        rows = [(item.hash, _db_value(FortuneGeneration, "for_date", item.inp.for_date),
                 item.generated.content.model_dump_json(), provider, model, item.generated.tokens_in,
                 item.generated.tokens_out, now) for item in items]
        # RETURNING needs SQLite 3.35; without it every id comes from the look-up below.
        returning = connection.features.can_return_rows_from_bulk_insert
        returned, _ = _insert_values(
            model=FortuneGeneration,
            columns=["input_hash", "for_date", "content", "provider", "model", "tokens_in", "tokens_out",
                     "created_at"],
            rows=rows,
            tail="ON CONFLICT (input_hash) DO NOTHING" + (" RETURNING input_hash, id" if returning else ""),
            returning=returning,
        )
        ids = dict(returned)
    missing = [item.hash for item in items if item.hash not in ids]
    if missing:
        ids.update(generation_ids_by_hash(hashes=missing))
    return ids


def fortune_results_store_many(
    *, pairs: Sequence[tuple[int, int]], for_date: dt.date, replace: bool = False,
    source: str = FortuneResult.Source.BATCH,
) -> int:
    """Insert (user_id, generation_id) results for for_date; returns how many rows were written.

    replace=False never touches an existing row (a user may already have read it); replace=True
    (--force) points existing rows at the new generation.
    """
    if not pairs:
        return 0
    now = _db_value(FortuneResult, "created_at", timezone.now())
    day = _db_value(FortuneResult, "for_date", for_date)
    if replace:
        conflict = ("ON CONFLICT (user_id, for_date) DO UPDATE SET generation_id = EXCLUDED.generation_id, "
                    "source = EXCLUDED.source, updated_at = EXCLUDED.updated_at")
    else:
        conflict = "ON CONFLICT (user_id, for_date) DO NOTHING"
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(FortuneResult._meta.db_table)
        with connection.cursor() as cursor:
            _copy_into_stage(cursor, stage=_RESULT_STAGE, text=_copy_text(pairs))
            cursor.execute(
                f"INSERT INTO {table} (user_id, for_date, generation_id, source, created_at, updated_at) "
                f"SELECT user_id, %s, generation_id, %s, %s, %s FROM {_RESULT_STAGE} {conflict}",
                [day, str(source), now, now],
            )
            return max(cursor.rowcount, 0)
    _, written = _insert_values(
        model=FortuneResult,
        columns=["user_id", "for_date", "generation_id", "source", "created_at", "updated_at"],
        rows=[(user_id, day, generation_id, str(source), now, now) for user_id, generation_id in pairs],
        tail=conflict,
    )
    return written


def batch_output_store(
    *, items: Sequence[GeneratedItem], reused: Sequence[tuple[int, int]], waiting: dict[str, list[int]],
    for_date: dt.date, provider: str, model: str, replace: bool = False, copy_text: str | None = None,
) -> tuple[dict[str, int], int]:
    """One flush, in one transaction: new generations, then the results pointing at them.

    reused: (user_id, generation_id) pairs whose generation is already stored; waiting: hash -> user
    ids whose generation is among items. Returns (hash -> id of the stored generations, results sent).
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            # A batch flush need not wait for the WAL flush: if the database server itself crashes,
            # the last fraction of a second of commits is lost and the next run fills those gaps.
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        ids = generations_store_many(items=items, provider=provider, model=model, copy_text=copy_text)
        pairs = list(reused)
        for digest, user_ids in waiting.items():
            generation_id = ids[digest]
            pairs.extend((user_id, generation_id) for user_id in user_ids)
        stored = fortune_results_store_many(pairs=pairs, for_date=for_date, replace=replace)
    return ids, stored


@dataclass(slots=True)
class Flush:
    """One batch_output_store call; ids and stored are filled in once it is written."""

    items: list[GeneratedItem]
    reused: list[tuple[int, int]]
    waiting: dict[str, list[int]]
    ids: dict[str, int] = field(default_factory=dict)
    stored: int = 0
    copy_text: str | None = None


class BatchWriter:
    """Writes flushes in order, each in its own transaction, on one thread with its own connection.

    threaded=False writes inline on the caller's thread instead: for SQLite (one writer at a time)
    and for callers inside a transaction, whose uncommitted rows another connection cannot see.
    submit() blocks while WRITER_QUEUE flushes wait, so memory stays bounded; a writer failure is
    raised by the next submit(), done() or close() — never swallowed, never a hang.
    """

    def __init__(self, *, for_date: dt.date, provider: str, model: str, replace: bool, threaded: bool) -> None:
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
        flush.ids, flush.stored = batch_output_store(
            items=flush.items, reused=flush.reused, waiting=flush.waiting, copy_text=flush.copy_text, **self._store
        )
        flush.copy_text = None
        self._done.put(flush)

    def _work(self) -> None:
        try:
            while (flush := self._todo.get()) is not None:
                if self.error is None:  # after a failure, only drain so that no put() blocks forever
                    try:
                        self._write(flush)
                    except BaseException as exc:
                        logger.exception("fortune batch writer: a flush failed")
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
        if connection.vendor == "postgresql" and flush.items:
            # Serialise here, on the caller's thread: the writer thread then spends its time waiting
            # on the database with the GIL released, so both keep working.
            flush.copy_text = generations_copy_text(items=flush.items)
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

"""Bulk writes and look-ups of batch output: the plain ORM reference, and PostgreSQL's own statements.

Every database-specific statement of core/ lives here. `OrmBulk` is the reference and what any
database but PostgreSQL runs: `bulk_create` with `ignore_conflicts`/`update_conflicts` and
`filter(input_hash__in=…)`. `PostgresBulk` does the same work with statements only PostgreSQL
has, for a measured reason each (docs/BENCHMARKS.md, batch): rows travel by COPY into a temporary
staging table and one INSERT … SELECT … ON CONFLICT moves them (building the ORM's multi-row
VALUES list client-side cost more than the database's whole insert); one array parameter
(= ANY) takes a page of hashes where the ORM binds one parameter per hash; a flush commits without
waiting for the WAL flush. tests/batch/test_bulk.py runs both on the same data and compares.
"""

import datetime as dt
import io
from collections.abc import Iterable, Iterator, Sequence

from django.db import connection
from django.utils import timezone

from core.models import FortuneGeneration, FortuneResult

INSERT_BATCH = 2000
LOOKUP_BATCH = 2000

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


def _chunks(values: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class OrmBulk:
    """The reference implementation, on the ORM alone (any database)."""

    name = "orm"

    def generation_ids(self, *, hashes: Sequence[str]) -> dict[str, int]:
        """hash -> id of the stored generations among hashes."""
        found: dict[str, int] = {}
        for chunk in _chunks(hashes, LOOKUP_BATCH):
            found.update(FortuneGeneration.objects.filter(input_hash__in=chunk).values_list("input_hash", "id"))
        return found

    def generations_prepare(self, *, items: Sequence) -> str | None:
        """Work a flush can do before it reaches the writer thread (nothing, here)."""
        return None

    def generations_insert(self, *, items: Sequence, provider: str, model: str, prepared: str | None = None
                           ) -> dict[str, int]:
        """Insert the generations whose hash is new; returns hash -> id of those it knows (none, here)."""
        now = timezone.now()
        FortuneGeneration.objects.bulk_create(
            [FortuneGeneration(input_hash=item.hash, for_date=item.inp.for_date,
                               content=item.generated.content.as_json(), provider=provider, model=model,
                               tokens_in=item.generated.tokens_in, tokens_out=item.generated.tokens_out,
                               created_at=now) for item in items],
            batch_size=INSERT_BATCH, ignore_conflicts=True,
        )
        return {}

    def results_insert(self, *, pairs: Sequence[tuple[int, int]], for_date: dt.date, replace: bool, source: str
                       ) -> int:
        """Insert (user_id, generation_id) results; replace=True repoints existing ones. Returns rows written."""
        now = timezone.now()
        rows = [FortuneResult(user_id=user_id, for_date=for_date, generation_id=generation_id, source=source,
                              created_at=now, updated_at=now) for user_id, generation_id in pairs]
        if replace:
            FortuneResult.objects.bulk_create(
                rows, batch_size=INSERT_BATCH, update_conflicts=True, unique_fields=["user", "for_date"],
                update_fields=["generation", "source", "updated_at"],
            )
            return len(rows)
        present: set[int] = set()
        for chunk in _chunks([user_id for user_id, _ in pairs], LOOKUP_BATCH):
            present.update(FortuneResult.objects.filter(for_date=for_date, user_id__in=chunk)
                           .values_list("user_id", flat=True))
        new = [row for row in rows if row.user_id not in present]
        # ignore_conflicts still: a concurrent on-demand answer may land between the look-up and the insert.
        FortuneResult.objects.bulk_create(new, batch_size=INSERT_BATCH, ignore_conflicts=True)
        return len(new)

    def flush_begin(self) -> None:
        """Called first inside each flush's transaction."""


class PostgresBulk(OrmBulk):
    """The same work in PostgreSQL's own statements."""

    name = "postgresql"

    def generation_ids(self, *, hashes: Sequence[str]) -> dict[str, int]:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT input_hash, id FROM {_table(FortuneGeneration)} WHERE input_hash = ANY(%s)",
                           [list(hashes)])
            return dict(cursor.fetchall())

    def generations_prepare(self, *, items: Sequence) -> str:
        """The generations' staging rows (content serialised here: the costly part)."""
        return _copy_text(
            (item.hash, item.inp.for_date.isoformat(), item.generated.content.model_dump_json(),
             item.generated.tokens_in, item.generated.tokens_out) for item in items
        )

    def generations_insert(self, *, items: Sequence, provider: str, model: str, prepared: str | None = None
                           ) -> dict[str, int]:
        # RETURNING gives the ids of the rows inserted; only hashes that already existed (rare:
        # planning skips stored inputs) need a look-up afterwards.
        now = _db_value(FortuneGeneration, "created_at", timezone.now())
        with connection.cursor() as cursor:
            _copy_into_stage(cursor, stage=_GEN_STAGE, text=prepared or self.generations_prepare(items=items))
            cursor.execute(
                f"INSERT INTO {_table(FortuneGeneration)} (input_hash, for_date, content, provider, model, tokens_in, "
                f"tokens_out, created_at) SELECT input_hash, for_date, content, %s, %s, tokens_in, tokens_out, %s "
                f"FROM {_GEN_STAGE} ON CONFLICT (input_hash) DO NOTHING RETURNING input_hash, id",
                [provider, model, now],
            )
            return dict(cursor.fetchall())

    def results_insert(self, *, pairs: Sequence[tuple[int, int]], for_date: dt.date, replace: bool, source: str
                       ) -> int:
        now = _db_value(FortuneResult, "created_at", timezone.now())
        if replace:
            conflict = ("ON CONFLICT (user_id, for_date) DO UPDATE SET generation_id = EXCLUDED.generation_id, "
                        "source = EXCLUDED.source, updated_at = EXCLUDED.updated_at")
        else:
            conflict = "ON CONFLICT (user_id, for_date) DO NOTHING"
        with connection.cursor() as cursor:
            _copy_into_stage(cursor, stage=_RESULT_STAGE, text=_copy_text(pairs))
            cursor.execute(
                f"INSERT INTO {_table(FortuneResult)} (user_id, for_date, generation_id, source, created_at, "
                f"updated_at) SELECT user_id, %s, generation_id, %s, %s, %s FROM {_RESULT_STAGE} {conflict}",
                [_db_value(FortuneResult, "for_date", for_date), str(source), now, now],
            )
            return max(cursor.rowcount, 0)

    def flush_begin(self) -> None:
        # A batch flush need not wait for the WAL flush: if the database server itself crashes, the
        # last fraction of a second of commits is lost and the next run fills those gaps.
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit TO OFF")


ORM = OrmBulk()
POSTGRESQL = PostgresBulk()


def bulk_for_connection() -> OrmBulk:
    """The implementation for the default connection's database."""
    return POSTGRESQL if connection.vendor == "postgresql" else ORM


def concurrent_writer_supported() -> bool:
    """Whether a writer thread may write while others read (SQLite has one writer at a time)."""
    return connection.vendor == "postgresql"


def _table(model) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _db_value(model, name: str, value):
    return model._meta.get_field(name).get_db_prep_save(value, connection)


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

"""Bulk writes and look-ups of batch output: the plain ORM reference, and PostgreSQL's own statements.

Every database-specific statement of core/ lives here. `OrmBulk` is the reference and what any
database but PostgreSQL runs: `bulk_create` with `ignore_conflicts`/`update_conflicts` and
`filter(input_hash__in=…)`. `PostgresBulk` does the same work with statements only PostgreSQL
has, for a measured reason each (docs/BENCHMARKS.md, batch): rows travel by COPY into a temporary
staging table and one INSERT … SELECT … ON CONFLICT moves them (building the ORM's multi-row
VALUES list client-side cost more than the database's whole insert); one array parameter
(= ANY) takes a page of hashes where the ORM binds one parameter per hash; a flush commits without
waiting for the WAL flush. tests/nightly/test_bulk.py runs both on the same data and compares.

A result row is written only for a user who still exists, is still eligible and, when the row
carries the natal key it was planned from, still has that key: a user deleted or whose birth data
changed while the run was generating is skipped and reported (ResultsWritten), never a foreign-key
failure that costs the whole flush, never a fortune from birth data the user no longer has.
"""

import datetime as dt
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone

from core.models import FortuneGeneration, FortuneResult, User

INSERT_BATCH = 2000
LOOKUP_BATCH = 2000

_GEN_STAGE = "fortune_generation_stage"
_RESULT_STAGE = "fortune_result_stage"
# Per connection; ON COMMIT DELETE ROWS frees it between flushes, TRUNCATE covers flushes nested in
# an outer transaction (tests, or a caller's atomic block) where no commit happens in between.
_STAGE_DDL = {
    _GEN_STAGE: "input_hash varchar(64), for_date date, content jsonb, tokens_in integer, tokens_out integer",
    _RESULT_STAGE: "user_id bigint, generation_id bigint, natal_key text",
}
# COPY text format: backslash first, then the characters that would end a field or a row.
_COPY_ESCAPES = (("\\", "\\\\"), ("\t", "\\t"), ("\n", "\\n"), ("\r", "\\r"))


NATAL_KEY_FIELDS = ("saju_year", "saju_month", "saju_day", "saju_hour", "gender")
NATAL_KEY_SEPARATOR = "|"

# A result row: (user_id, generation_id), or (user_id, generation_id, natal key planned from).
ResultRow = tuple[int, int] | tuple[int, int, str | None]


def natal_key(*values: str | None) -> str:
    """The user fields a generation input is built from (NATAL_KEY_FIELDS' values, in that order),
    as one string: what a result row is checked against before it is written."""
    return NATAL_KEY_SEPARATOR.join(value or "" for value in values)


def natal_key_of_input(inp) -> str:
    """The natal key of the users a GenerationInput was built for (GenerationInput.for_user)."""
    return natal_key(inp.year, inp.month, inp.day, inp.hour, inp.gender)


@dataclass(slots=True)
class ResultsWritten:
    stored: int = 0  # rows written
    gone: list[int] = field(default_factory=list)  # users deleted (or no longer eligible) since planning
    changed: list[int] = field(default_factory=list)  # users whose natal key changed since planning


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

    def results_insert(self, *, pairs: Sequence[ResultRow], for_date: dt.date, replace: bool, source: str
                       ) -> ResultsWritten:
        """Insert result rows; replace=True repoints existing ones. Rows of users gone or changed since
        planning are skipped and reported."""
        written = ResultsWritten()
        current: dict[int, str] = {}
        for chunk in _chunks([row[0] for row in pairs], LOOKUP_BATCH):
            eligible = User.objects.filter(pk__in=chunk, is_active=True, birth_date_solar__isnull=False)
            for pk, *values in eligible.values_list("pk", *NATAL_KEY_FIELDS):
                current[pk] = natal_key(*values)
        checked = []
        for row in pairs:
            key = current.get(row[0])
            if key is None:
                written.gone.append(row[0])
            elif len(row) > 2 and row[2] is not None and row[2] != key:
                written.changed.append(row[0])
            else:
                checked.append(row)
        now = timezone.now()
        rows = [FortuneResult(user_id=row[0], for_date=for_date, generation_id=row[1], source=source,
                              created_at=now, updated_at=now) for row in checked]
        if replace:
            FortuneResult.objects.bulk_create(
                rows, batch_size=INSERT_BATCH, update_conflicts=True, unique_fields=["user", "for_date"],
                update_fields=["generation", "source", "updated_at"],
            )
            written.stored = len(rows)
            return written
        present: set[int] = set()
        for chunk in _chunks([row.user_id for row in rows], LOOKUP_BATCH):
            present.update(FortuneResult.objects.filter(for_date=for_date, user_id__in=chunk)
                           .values_list("user_id", flat=True))
        new = [row for row in rows if row.user_id not in present]
        # ignore_conflicts still: a concurrent on-demand answer may land between the look-up and the insert.
        FortuneResult.objects.bulk_create(new, batch_size=INSERT_BATCH, ignore_conflicts=True)
        written.stored = len(new)
        return written

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

    def results_insert(self, *, pairs: Sequence[ResultRow], for_date: dt.date, replace: bool, source: str
                       ) -> ResultsWritten:
        now = _db_value(FortuneResult, "created_at", timezone.now())
        if replace:
            conflict = ("ON CONFLICT (user_id, for_date) DO UPDATE SET generation_id = EXCLUDED.generation_id, "
                        "source = EXCLUDED.source, updated_at = EXCLUDED.updated_at")
        else:
            conflict = "ON CONFLICT (user_id, for_date) DO NOTHING"
        key = ", ".join(f"u.{connection.ops.quote_name(name)}" for name in NATAL_KEY_FIELDS)
        with connection.cursor() as cursor:
            _copy_into_stage(cursor, stage=_RESULT_STAGE,
                             text=_copy_text(row if len(row) > 2 else (*row, None) for row in pairs))
            # One statement: the users' check, the insert, and who was skipped and why.
            cursor.execute(
                f"WITH checked AS (SELECT s.user_id, s.generation_id, u.id IS NOT NULL AS present, "
                f"s.natal_key IS NULL OR s.natal_key = concat_ws(%s, {key}) AS same FROM {_RESULT_STAGE} s "
                f"LEFT JOIN {_table(User)} u ON u.id = s.user_id AND u.is_active AND u.birth_date_solar IS NOT NULL"
                f"), written AS (INSERT INTO {_table(FortuneResult)} (user_id, for_date, generation_id, source, "
                f"created_at, updated_at) SELECT user_id, %s, generation_id, %s, %s, %s FROM checked "
                f"WHERE present AND same {conflict} RETURNING 1) "
                f"SELECT (SELECT count(*) FROM written), "
                f"coalesce(array_agg(user_id) FILTER (WHERE NOT present), '{{}}'), "
                f"coalesce(array_agg(user_id) FILTER (WHERE present AND NOT same), '{{}}') FROM checked",
                [NATAL_KEY_SEPARATOR, _db_value(FortuneResult, "for_date", for_date), str(source), now, now],
            )
            stored, gone, changed = cursor.fetchone()
            return ResultsWritten(stored=stored, gone=list(gone), changed=list(changed))

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

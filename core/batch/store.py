"""Store batch output: generations once per input hash, then one result row per user — in bulk.

Both writes are multi-row INSERT … ON CONFLICT, so a rerun or a concurrent on-demand generation
never duplicates a row, and neither issues a query per user.
"""

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Generated
from core.models import FortuneGeneration, FortuneResult

INSERT_BATCH = 2000
LOOKUP_BATCH = 2000


@dataclass(frozen=True, slots=True)
class GeneratedItem:
    inp: GenerationInput
    hash: str
    generated: Generated


def generation_ids_by_hash(*, hashes: Iterable[str]) -> dict[str, int]:
    hashes = list(hashes)
    found: dict[str, int] = {}
    for start in range(0, len(hashes), LOOKUP_BATCH):
        chunk = hashes[start : start + LOOKUP_BATCH]
        found.update(FortuneGeneration.objects.filter(input_hash__in=chunk).values_list("input_hash", "id"))
    return found


def _insert_many(
    *, model, columns: Sequence[str], rows: Sequence[tuple], conflict: str, casts: dict | None = None
) -> int:
    """Multi-row INSERT … ON CONFLICT (PostgreSQL and SQLite ≥ 3.24); returns the rows written.

    Raw SQL rather than bulk_create: model instances and JSONField's json.dumps cost more than the
    database does at a million rows, and the content arrives already serialised.
    """
    if not rows:
        return 0
    qn = connection.ops.quote_name
    casts = casts or {}
    fields = [model._meta.get_field(name.removesuffix("_id")) for name in columns]
    per_row = "(" + ", ".join(f"%s{casts.get(name, '')}" for name in columns) + ")"
    head = (f"INSERT INTO {qn(model._meta.db_table)} ({', '.join(qn(name) for name in columns)}) VALUES ")
    batch = max(1, min(INSERT_BATCH, connection.ops.bulk_batch_size(fields, rows)))
    written = 0
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            from psycopg2.extras import execute_values

            # execute_values builds each page's VALUES list in C: a third faster than one big
            # parameterised statement through Django's cursor wrapper.
            for start in range(0, len(rows), INSERT_BATCH):
                execute_values(cursor.cursor, head + "%s " + conflict, rows[start : start + INSERT_BATCH],
                               template=per_row, page_size=INSERT_BATCH)
                written += max(cursor.cursor.rowcount, 0)
            return written
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            cursor.execute(head + ", ".join([per_row] * len(chunk)) + " " + conflict,
                           [value for row in chunk for value in row])
            written += max(cursor.rowcount, 0)
    return written


def _db_value(model, name: str, value):
    return model._meta.get_field(name).get_db_prep_save(value, connection)


def generations_store_many(*, items: Sequence[GeneratedItem], provider: str, model: str) -> dict[str, int]:
    """Insert the generations whose hash is new; return hash -> id for every item."""
    if not items:
        return {}
    now = _db_value(FortuneGeneration, "created_at", timezone.now())
    dates: dict[dt.date, object] = {}
    rows = []
    for item in items:
        for_date = item.inp.for_date
        if for_date not in dates:
            dates[for_date] = _db_value(FortuneGeneration, "for_date", for_date)
        generated = item.generated
        rows.append((item.hash, dates[for_date], generated.content.model_dump_json(), provider, model,
                     generated.tokens_in, generated.tokens_out, now))
    _insert_many(
        model=FortuneGeneration,
        columns=["input_hash", "for_date", "content", "provider", "model", "tokens_in", "tokens_out", "created_at"],
        rows=rows, conflict="ON CONFLICT (input_hash) DO NOTHING",
        casts={"content": "::jsonb"} if connection.vendor == "postgresql" else {},
    )
    return generation_ids_by_hash(hashes=[item.hash for item in items])


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
    return _insert_many(
        model=FortuneResult,
        columns=["user_id", "for_date", "generation_id", "source", "created_at", "updated_at"],
        rows=[(user_id, day, generation_id, str(source), now, now) for user_id, generation_id in pairs],
        conflict=conflict,
    )


def batch_output_store(
    *, items: Sequence[GeneratedItem], reused: Sequence[tuple[int, int]], waiting: dict[str, list[int]],
    for_date: dt.date, provider: str, model: str, replace: bool = False,
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
        ids = generations_store_many(items=items, provider=provider, model=model)
        pairs = list(reused)
        for digest, user_ids in waiting.items():
            generation_id = ids[digest]
            pairs.extend((user_id, generation_id) for user_id in user_ids)
        stored = fortune_results_store_many(pairs=pairs, for_date=for_date, replace=replace)
    return ids, stored

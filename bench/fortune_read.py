"""The /fortune/today read, its parts side by side with their references, in-process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fortuna_bench_api .venv/bin/python bench/fortune_read.py

Needs the data of bench/api.py (its database, fortuna_bench_api). Each part is timed beside what it
replaced or what it is measured against:
- the ORM read (fortune_get_for_date) and the same row by a fixed statement on a plain cursor (what
  the read was before issue 8);
- the renderer writing the stored content as it is (FortuneJSONRenderer) and DRF's JSONRenderer
  after decoding it (what the read did before);
- what Django's health check of a reused connection costs each request (SELECT 1), with the
  database server's own CPU per check read from /proc (same host only).
Client CPU and wall time per call, the best of 5 runs of 2,000 calls.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fortuna_api.settings")
os.environ.setdefault("DEBUG", "1")
import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.db.backends.postgresql.base import DatabaseWrapper as DjangoWrapper  # noqa: E402
from rest_framework.renderers import JSONRenderer  # noqa: E402

from bench.common import cpu_ticks  # noqa: E402
from core.api.fortunes import _FORTUNE_OUTPUT  # noqa: E402
from core.api.renderers import FortuneJSONRenderer  # noqa: E402
from core.models import FortuneGeneration, FortuneResult, User  # noqa: E402
from core.services.fortunes import fortune_get_for_date  # noqa: E402

CALLS = 2000
RUNS = 5
_FIXED = (
    f"SELECT r.generation_id, r.source, g.created_at, g.content::text FROM {FortuneResult._meta.db_table} r "
    f"JOIN {FortuneGeneration._meta.db_table} g ON g.id = r.generation_id WHERE r.user_id = %s AND r.for_date = %s"
)


def per_call(call, *, server_pid: int | None = None) -> tuple[float, float, float | None]:
    """Best client CPU, wall time and (with server_pid) server CPU per call, in µs."""
    call()
    best = (float("inf"), float("inf"), None)
    for _ in range(RUNS):
        ticks = cpu_ticks(server_pid) if server_pid else 0
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(CALLS):
            call()
        cpu, wall = (time.process_time() - cpu) / CALLS * 1e6, (time.perf_counter() - wall) / CALLS * 1e6
        server = (cpu_ticks(server_pid) - ticks) / os.sysconf("SC_CLK_TCK") / CALLS * 1e6 if server_pid else None
        if cpu < best[0]:
            best = (cpu, wall, server)
    return best


def health_check(wrapper_class):
    """One reused connection's health check, as each request does before its first query."""
    db = wrapper_class({**connection.settings_dict, "CONN_MAX_AGE": 600, "CONN_HEALTH_CHECKS": True}, alias="bench")
    db.ensure_connection()
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]

    def check() -> None:
        db.health_check_done = False
        db.close_if_health_check_failed()

    return check, pid


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    if connection.vendor != "postgresql":
        sys.exit("needs PostgreSQL with bench/api.py's data")
    row = FortuneResult.objects.order_by("-for_date").first()
    if row is None:
        sys.exit("no fortunes: run bench/api.py once first")
    user, day = User.objects.get(pk=row.user_id), row.for_date
    stored = fortune_get_for_date(user=user, for_date=day)
    data = _FORTUNE_OUTPUT.to_representation(stored)
    decoded = {**data, "fortune": json.loads(stored.content_json)}
    with connection.cursor() as cursor:
        def fixed() -> None:
            cursor.execute(_FIXED, [user.pk, day])
            cursor.fetchone()

        figures = {
            "ORM read (fortune_get_for_date)": per_call(lambda: fortune_get_for_date(user=user, for_date=day)),
            "  reference: fixed statement": per_call(fixed),
            "serializer to_representation": per_call(lambda: _FORTUNE_OUTPUT.to_representation(stored)),
            "FortuneJSONRenderer (stored JSON)": per_call(lambda: FortuneJSONRenderer().render(data)),
            "  reference: decode + JSONRenderer": per_call(
                lambda: JSONRenderer().render({**data, "fortune": json.loads(stored.content_json)})
            ),
        }
    assert json.loads(FortuneJSONRenderer().render(data)) == json.loads(JSONRenderer().render(decoded))
    check, pid = health_check(DjangoWrapper)
    figures["health check, Django's (SELECT 1)"] = per_call(check, server_pid=pid)
    print(f"{'':36s} {'client CPU':>11s} {'wall':>9s} {'server CPU':>11s}   (µs per call, best of {RUNS} × {CALLS})")
    for name, (cpu, wall, server) in figures.items():
        server_text = f"{server:9.1f}" if server is not None else f"{'':9s}"
        print(f"{name:36s} {cpu:11.1f} {wall:9.1f} {server_text}")


if __name__ == "__main__":
    main()

"""The /fortune/today read, its parts side by side: the ORM read (fortune_get_for_date), the same row by
a fixed statement on a plain cursor (what the read was before issue 8), the serializer and the renderer.
Client CPU per call, in-process. Needs the data of bench/api.py (its database, fortuna_bench_api).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fortuna_bench_api .venv/bin/python bench/fortune_read.py
"""

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
from rest_framework.renderers import JSONRenderer  # noqa: E402

from core.api.fortunes import _FORTUNE_OUTPUT  # noqa: E402
from core.models import FortuneGeneration, FortuneResult, User  # noqa: E402
from core.services.fortunes import fortune_get_for_date  # noqa: E402

CALLS = 2000
_FIXED = (
    f"SELECT r.generation_id, r.source, g.created_at, g.content::text FROM {FortuneResult._meta.db_table} r "
    f"JOIN {FortuneGeneration._meta.db_table} g ON g.id = r.generation_id WHERE r.user_id = %s AND r.for_date = %s"
)


def cpu_per_call(call) -> float:
    call()
    started = time.process_time()
    for _ in range(CALLS):
        call()
    return (time.process_time() - started) / CALLS * 1e6


def main() -> None:
    if connection.vendor != "postgresql":
        sys.exit("needs PostgreSQL with bench/api.py's data")
    row = FortuneResult.objects.order_by("-for_date").first()
    if row is None:
        sys.exit("no fortunes: run bench/api.py once first")
    user, day = User.objects.get(pk=row.user_id), row.for_date
    stored = fortune_get_for_date(user=user, for_date=day)
    data = _FORTUNE_OUTPUT.to_representation(stored)
    with connection.cursor() as cursor:
        def fixed() -> None:
            cursor.execute(_FIXED, [user.pk, day])
            cursor.fetchone()

        figures = {
            "ORM read (fortune_get_for_date)": cpu_per_call(lambda: fortune_get_for_date(user=user, for_date=day)),
            "fixed statement, plain cursor": cpu_per_call(fixed),
            "serializer to_representation": cpu_per_call(lambda: _FORTUNE_OUTPUT.to_representation(stored)),
            "JSONRenderer.render": cpu_per_call(lambda: JSONRenderer().render(data)),
        }
    for name, micros in figures.items():
        print(f"{name:34s} {micros:7.1f} µs client CPU per call ({CALLS} calls)")


if __name__ == "__main__":
    main()

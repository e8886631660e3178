"""Benchmark of the operators' view (/ops/). Not a test: prints its configuration and figures.

    createdb -h 127.0.0.1 -U postgres fortuna_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fortuna_bench .venv/bin/python bench/ops.py
    ... --users 500 --nights 10 --repeat 5          # small, for a quick check (SQLite works too)

Target (issue 11): every /ops/ page and /ops/status.json answers in <= 100 ms with 365 NightlyRun rows
and 1M fortunes. The default data: --users eligible users (+10% ineligible) with a fortune for each
of the last --nights nights (11,112 x 90 = 1.0M, the default retention), 2% of them on demand, and
--runs NightlyRun rows (one finished run per night, a running one for tomorrow). Each page is fetched
in process through Django's test client as a signed-in staff user (--repeat times after one warm-up);
the median and p95 of the whole request are printed with its query count. On PostgreSQL every query
of every page is EXPLAINed and any sequential scan of the fortune table is reported.

The database is WIPED (users, fortunes, runs): it refuses to run unless the database name contains "bench".
"""

import argparse
import datetime as dt
import os
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fortuna_api.settings")
os.environ.setdefault("DEBUG", "0")
os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
os.environ.setdefault("ALLOWED_HOSTS", "testserver")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("FORTUNE_PROVIDER", "local")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test import Client  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from bench.common import wipe  # noqa: E402
from core.models import FortuneGeneration, FortuneResult, NightlyRun, User  # noqa: E402

TARGET_MS = 100.0
ON_DEMAND_SHARE = 0.02
INELIGIBLE_SHARE = 0.1
NOT_A_BENCH_DATABASE = "Refusing to wipe {name!r}: bench/ops.py only runs on a database whose name contains 'bench'."


def users_seed(*, count: int, rng: random.Random) -> list[int]:
    total = int(count * (1 + INELIGIBLE_SHARE))
    rows = []
    for n in range(total):
        eligible = n < count
        rows.append(User(
            username=f"bench{n}", email=f"bench{n}@example.com", password="!",
            is_active=eligible or rng.random() < 0.5,
            birth_date_solar=dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(60 * 365))
            if eligible or rng.random() < 0.5 else None,
        ))
    User.objects.bulk_create(rows, batch_size=5000)
    return list(User.objects.order_by("pk").values_list("pk", flat=True)[:count])


def fortunes_seed(*, user_ids: list[int], nights: int, today: dt.date) -> int:
    """One fortune per user per night for the last `nights` nights (up to today), one shared
    generation per night; 2% of them made on demand."""
    start = today - dt.timedelta(days=nights - 1)
    generations = FortuneGeneration.objects.bulk_create(
        FortuneGeneration(input_hash=f"bench-{n:058d}", for_date=start + dt.timedelta(days=n),
                          content={"summary": "bench"}, provider="local")
        for n in range(nights)
    )
    table = FortuneResult._meta.db_table
    if connection.vendor == "postgresql":
        # Server-side, in one statement: a Python loop over 1M rows would dominate the set-up time.
        with connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (user_id, for_date, generation_id, source, created_at, updated_at) "
                "SELECT u.id, g.for_date, g.id, CASE WHEN random() < %s THEN 'on_demand' ELSE 'batch' END, "
                "now(), now() "
                f"FROM {User._meta.db_table} u CROSS JOIN {FortuneGeneration._meta.db_table} g WHERE u.id = ANY(%s)",
                [ON_DEMAND_SHARE, user_ids],
            )
            return cursor.rowcount
    rng = random.Random(2)
    created = 0
    for generation in generations:
        rows = [FortuneResult(user_id=uid, for_date=generation.for_date, generation=generation,
                              source="on_demand" if rng.random() < ON_DEMAND_SHARE else "batch") for uid in user_ids]
        created += len(FortuneResult.objects.bulk_create(rows, batch_size=5000))
    return created


def runs_seed(*, runs: int, eligible: int, today: dt.date, rng: random.Random) -> NightlyRun:
    rows = []
    for n in range(runs - 1):
        target = today - dt.timedelta(days=runs - 2 - n)
        started = timezone.make_aware(dt.datetime.combine(target - dt.timedelta(days=1), dt.time(22)))
        failed = rng.randrange(0, max(eligible // 500, 2))
        generated = eligible - failed
        rows.append(NightlyRun(
            base_date=target - dt.timedelta(days=1), target_date=target,
            status=NightlyRun.Status.PARTIAL if failed else NightlyRun.Status.SUCCEEDED, eligible=eligible,
            generated=generated, generations=generated // 3, failed=failed, llm_requests=generated // 3 + failed,
            tokens_in=generated * 140, tokens_out=generated * 200, estimated_cost=Decimal("0.05"), workers=16,
            provider="openai", model="gpt-4o-mini", started_at=started, heartbeat_at=started,
            finished_at=started + dt.timedelta(seconds=rng.randrange(200, 900)), hostname="worker", pid=1,
            failure_sample=[{"reason": "timeout", "error": "Request timed out.", "input": "", "count": failed,
                             "user_ids": []}] if failed else [],
        ))
    NightlyRun.objects.bulk_create(rows)
    now = timezone.now()
    return NightlyRun.objects.create(
        base_date=today, target_date=today + dt.timedelta(days=1), status=NightlyRun.Status.RUNNING, eligible=eligible,
        generated=eligible // 3, failed=3, workers=16, provider="openai", started_at=now - dt.timedelta(minutes=5),
        heartbeat_at=now, hostname="worker", pid=2,
        failure_sample=[{"reason": "rate_limited", "error": "429", "input": "", "count": 3, "user_ids": []}],
    )


def _seq_scans(captured) -> list[str]:
    if connection.vendor != "postgresql":
        return []
    table = FortuneResult._meta.db_table
    found = []
    with connection.cursor() as cursor:
        for query in captured:
            sql = query["sql"]
            if not sql.lstrip().upper().startswith("SELECT"):
                continue
            cursor.execute(f"EXPLAIN {sql}")
            plan = "\n".join(row[0] for row in cursor.fetchall())
            if f"Seq Scan on {table}" in plan:
                found.append(sql[:160])
    return found


def measure(*, client: Client, url: str, repeat: int) -> dict:
    response = client.get(url)  # warm-up: template compilation, first connection
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}")
    timings = []
    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    queries = len(captured.captured_queries)
    for _ in range(repeat):
        started = time.perf_counter()
        client.get(url)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {
        "median": statistics.median(timings), "p95": timings[min(len(timings) - 1, int(0.95 * len(timings)))],
        "queries": queries, "seq_scans": _seq_scans(captured.captured_queries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=11_112, help="eligible users (+10%% ineligible)")
    parser.add_argument("--nights", type=int, default=90, help="nights with a fortune per user")
    parser.add_argument("--runs", type=int, default=365, help="NightlyRun rows")
    parser.add_argument("--repeat", type=int, default=30, help="timed requests per page")
    parser.add_argument("--reuse-data", action="store_true", help="keep the data of the previous run")
    args = parser.parse_args()
    if min(args.users, args.nights, args.runs, args.repeat) < 1:
        parser.error("--users, --nights, --runs and --repeat must be at least 1")
    name = str(connection.settings_dict["NAME"])
    if "bench" not in name:
        raise SystemExit(NOT_A_BENCH_DATABASE.format(name=name))
    call_command("migrate", verbosity=0)
    today = timezone.localdate()
    rng = random.Random(1)
    if not args.reuse_data or not NightlyRun.objects.exists():
        started = time.perf_counter()
        wipe()
        user_ids = users_seed(count=args.users, rng=rng)
        fortunes = fortunes_seed(user_ids=user_ids, nights=args.nights, today=today)
        runs_seed(runs=args.runs, eligible=args.users, today=today, rng=rng)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("VACUUM ANALYZE")  # what autovacuum does after a bulk load (index-only scans)
        print(f"seeded {fortunes:,} fortunes, {User.objects.count():,} users, {args.runs} runs "
              f"in {time.perf_counter() - started:.1f} s")
    staff, _ = User.objects.get_or_create(username="bench-operator", defaults={"is_staff": True, "password": "!"})
    client = Client()
    client.force_login(staff)
    run = NightlyRun.objects.order_by("-pk").first()
    pages = [
        "/ops/", "/ops/status.json", f"/ops/coverage/?date={(today - dt.timedelta(days=5)).isoformat()}",
        "/ops/history/?days=30", "/ops/history/?days=90", f"/ops/runs/{run.pk}/",
    ]
    print(f"{connection.vendor} {name}: {FortuneResult.objects.count():,} fortunes, "
          f"{NightlyRun.objects.count()} runs; {args.repeat} requests per page; target <= {TARGET_MS:.0f} ms")
    worst = 0.0
    for url in pages:
        figures = measure(client=client, url=url, repeat=args.repeat)
        worst = max(worst, figures["p95"])
        scans = f"; SEQ SCAN of fortunes: {figures['seq_scans']}" if figures["seq_scans"] else ""
        print(f"  {url:<34} median {figures['median']:6.1f} ms  p95 {figures['p95']:6.1f} ms  "
              f"{figures['queries']:2d} queries{scans}")
    print(f"worst p95 {worst:.1f} ms: {'OK' if worst <= TARGET_MS else 'OVER'} the {TARGET_MS:.0f} ms target")


if __name__ == "__main__":
    main()

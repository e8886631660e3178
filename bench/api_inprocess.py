"""API service time without the network: /api/ping and /fortune/today through the WSGI app, in-process.

Run from the repo root:  .venv/bin/python bench/api_inprocess.py [--users 300] [--batches 15] [--against REV]

A loaded box makes wrk's figures mean little; the time a request spends inside Django does not
depend on the load generator. This seeds the same PostgreSQL data as bench/api.py (--reuse-data
skips that), then runs each tree in a worker process of its own that imports the production WSGI
application (fortuna_api.wsgi, production settings as on Railway: DEBUG off, persistent connections,
connection health checks; bench/settings.py adds /api/ping) and calls it with WSGI environ dicts as
gunicorn would, rotating the tokens. The workers take turns, one batch of requests per endpoint each,
so both see the same load; the figure per tree and endpoint is the minimum over the batches (ms per
request), in wall-clock time and in the worker's own CPU time (which a busy box inflates less).

--against REV also runs the code of git revision REV (exported with `git archive`), side by side:
the way to compare a change with what it replaces. The targets of bench/api.py, read in-process:
/fortune/today's service time ≤ /api/ping's ÷ 0.6 (the 32-connection throughput ratio).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_PATHS,
    BENCH_DB,
    PG_SERVER,
    ROOT,
    api_env,
    data_seed,
    database_migrate,
    database_prepare,
    tree_export,
    wsgi_application_of,
    wsgi_get,
)

TARGET_RPS_RATIO = 0.60


def worker(*, source_dir: Path, requests: int) -> None:
    """Child: serve batches on request (a line on stdin), answer ms per request as JSON on stdout."""
    application = wsgi_application_of(source_dir)  # sets Django up, as gunicorn's import does
    from django.apps import apps

    tokens = list(apps.get_model("authtoken", "Token").objects.order_by("key").values_list("key", flat=True))

    def call(path: str, token: str) -> int:
        return wsgi_get(application, path=path, token=token)

    for path in API_PATHS:  # warm up: connection, caches, first-call imports
        for token in tokens[:50]:
            if (code := call(path, token)) != 200:
                raise SystemExit(f"{source_dir}: {path} answered {code}")
    position = 0
    for _line in sys.stdin:
        figures = {}
        for path in API_PATHS:
            started, cpu_started = time.perf_counter(), time.thread_time()
            for i in range(requests):
                call(path, tokens[(position + i) % len(tokens)])
            figures[path] = (time.perf_counter() - started) * 1000 / requests
            figures[f"{path} cpu"] = (time.thread_time() - cpu_started) * 1000 / requests
        position += requests
        print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint per batch")
    parser.add_argument("--against", default="", help="git revision to measure side by side (e.g. main)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""))
    parser.add_argument("--reuse-data", action="store_true", help="skip creating the database and the data")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", ""),
                        help="REDIS_URL for the app (as on Railway: throttles and the token cache in Redis)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: run as a child
    args = parser.parse_args()
    if args.worker:
        worker(source_dir=Path(args.worker), requests=args.requests)
        return

    database_url = args.database_url or f"{PG_SERVER}/{BENCH_DB}"
    if not args.reuse_data:
        database_url = database_prepare(database_url=args.database_url or None)
    database_migrate(database_url=database_url)  # with --reuse-data too: a newer tree's migrations apply
    if not args.reuse_data:
        data_seed(database_url=database_url, users=args.users)
    env = {**api_env(database_url), "PYTHONPATH": "", "PYTHONWARNINGS": "ignore"}
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    trees = {"this tree": ROOT}
    with tempfile.TemporaryDirectory(prefix="bench-inprocess-") as tmp:
        if args.against:
            trees = {args.against: tree_export(revision=args.against, into=Path(tmp) / "against"), **trees}
        children = {
            label: subprocess.Popen(
                [sys.executable, __file__, "--worker", str(tree), "--requests", str(args.requests)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            )
            for label, tree in trees.items()
        }
        best = {label: {} for label in trees}
        try:
            for _ in range(args.batches):
                for label, child in children.items():  # taking turns: both see the same load
                    child.stdin.write("batch\n")
                    child.stdin.flush()
                    figures = json.loads(child.stdout.readline())
                    for key, ms in figures.items():
                        best[label][key] = min(best[label].get(key, float("inf")), ms)
        finally:
            for child in children.values():
                child.stdin.close()
                child.wait()

    print(f"in-process service time, ms per request (min of {args.batches} batches of {args.requests}; "
          f"load average {os.getloadavg()[0]:.1f}); cpu: this process's CPU time alone (no database, no waiting)")
    columns = [*API_PATHS, *(f"{path} cpu" for path in API_PATHS)]
    print(f"{'tree':<14}" + "".join(f"{column:>20}" for column in columns) + f"{'ping/fortune':>14}")
    for label, figures in best.items():
        ratio = figures["/api/ping"] / figures["/fortune/today"]
        print(f"{label:<14}" + "".join(f"{figures[column]:>20.3f}" for column in columns) + f"{ratio:>14.2f}")
    print(f"(ping/fortune ≥ {TARGET_RPS_RATIO:.2f} is the 32-connection throughput target read in-process)")


if __name__ == "__main__":
    main()

"""Instructions per request (valgrind's callgrind), in-process: /api/ping and /fortune/today, this tree
beside another revision.

Run from the repo root (needs valgrind and bench/api.py's data; --against exports a revision with
`git archive`):

    .venv/bin/python bench/api_instructions.py --against 17dd692 --redis-url redis://127.0.0.1:6379/12

This box's speed drifts by a third within minutes, which blurs any timing of a change worth a few
per cent; a count of executed instructions does not move with it (the same run gives the same count
to a few hundred instructions). Each child process imports a tree's production WSGI application
(as gunicorn does: DEBUG off, persistent connections, health checks, the Redis cache), sends 2N
tokens one request each (so that each request after it finds its user in the token cache and a
throttle history of one), then N more, under callgrind; the same with 2N more, and the difference
divided by N is one request's count. What the database and Redis servers execute is not in it (bench/api.py
reads their CPU); what it shows is the client side of each request, comparable across trees.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    API_PATHS,
    BENCH_DB,
    PG_SERVER,
    ROOT,
    api_env,
    database_migrate,
    tree_export,
    wsgi_application_of,
    wsgi_get,
)

_COLLECTED = re.compile(r"Collected : (\d+)")


def child(*, source_dir: Path, path: str, warm: int, requests: int) -> None:
    application = wsgi_application_of(source_dir)
    from django.apps import apps
    from django.core.cache import cache

    cache.clear()
    tokens = list(apps.get_model("authtoken", "Token").objects.order_by("key").values_list("key", flat=True))
    if len(tokens) < warm:
        raise SystemExit(f"{warm} requests need as many tokens; the data has {len(tokens)}")
    for token in tokens[:warm]:
        if (code := wsgi_get(application, path=path, token=token)) != 200:
            raise SystemExit(f"{source_dir}: {path} answered {code}")
    for token in tokens[:requests]:
        wsgi_get(application, path=path, token=token)


def instructions(*, source_dir: Path, path: str, warm: int, requests: int, env: dict[str, str]) -> int:
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__,
         "--child", str(source_dir), "--path", path, "--warm", str(warm), "--requests", str(requests)],
        capture_output=True, text=True, env=env, check=True,
    )
    return int(_COLLECTED.search(out.stderr).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="", help="git revision to count beside this tree")
    parser.add_argument("--requests", type=int, default=100, help="N (the counts run N and 2N requests)")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""))
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", ""),
                        help="REDIS_URL for the app (as on Railway: throttles and the token cache in Redis)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="", help=argparse.SUPPRESS)
    parser.add_argument("--warm", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(source_dir=Path(args.child), path=args.path, warm=args.warm, requests=args.requests)
        return

    database_url = args.database_url or f"{PG_SERVER}/{BENCH_DB}"
    database_migrate(database_url=database_url)  # this tree's migrations on bench/api.py's data
    # PYTHONHASHSEED: the same dict and set layouts in every run. The token cache outlives the run.
    env = {**api_env(database_url), "PYTHONPATH": "", "PYTHONWARNINGS": "ignore", "PYTHONHASHSEED": "0",
           "AUTH_TOKEN_CACHE_SECONDS": "3600"}
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    n = args.requests
    with tempfile.TemporaryDirectory(prefix="bench-instructions-") as tmp:
        trees = {"this tree": ROOT}
        if args.against:
            trees = {args.against: tree_export(revision=args.against, into=Path(tmp) / "against"), **trees}
        for tree in trees.values():
            # One run of each path outside callgrind first, so that no first-time work (the bytecode of
            # every module a request imports, the tree's and the virtualenv's) lands in a counted run.
            for path in API_PATHS:
                subprocess.run([sys.executable, __file__, "--child", str(tree), "--path", path, "--warm", "1",
                                "--requests", "1"], env=env, capture_output=True, check=True)

        def count(tree: Path, path: str, requests: int) -> int:
            return instructions(source_dir=tree, path=path, warm=2 * n, requests=requests, env=env)

        counts = {
            (label, path): (count(tree, path, 2 * n) - count(tree, path, n)) // n
            for label, tree in trees.items() for path in API_PATHS
        }
    print(f"instructions per request (callgrind; {n} and {2 * n} requests per run, the difference / {n}); "
          f"Redis: {'yes' if args.redis_url else 'no'}")
    print(f"{'tree':<14}" + "".join(f"{path:>18}" for path in API_PATHS) + f"{'ping/fortune':>14}")
    for label in trees:
        ping, fortune = counts[(label, "/api/ping")], counts[(label, "/fortune/today")]
        print(f"{label:<14}{ping:>18,}{fortune:>18,}{ping / fortune:>14.2f}")


if __name__ == "__main__":
    main()

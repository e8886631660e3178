"""Django's RedisCache against fortuna_api.redis_cache.SharedClientRedisCache: client CPU per cache get,
side by side in one run (alternating, twice each). Needs Redis; not a test.

    PYTHONPATH=. .venv/bin/python bench/cache_client.py [--url redis://127.0.0.1:6379/12] [--calls 3000]
"""

import argparse
import os
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
import django  # noqa: E402

django.setup()

from django.core.cache.backends.redis import RedisCache  # noqa: E402

from fortuna_api.redis_cache import SharedClientRedisCache  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    for cls in (RedisCache, SharedClientRedisCache, RedisCache, SharedClientRedisCache):
        cache = cls(args.url, {})
        cache.set("bench:cache-client", {"a": 1}, 60)
        started = time.process_time()
        for _ in range(args.calls):
            cache.get("bench:cache-client")
        per_call = (time.process_time() - started) / args.calls * 1e6
        print(f"{cls.__name__:24s} get: {per_call:6.1f} µs client CPU per call ({args.calls} calls)")


if __name__ == "__main__":
    main()

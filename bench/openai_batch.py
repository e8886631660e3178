"""Benchmark of the day-ahead Batch API path: `bench/nightly.py --scenario batch-api` (or this file alone).
Not a test: prints its configuration and figures.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fortuna_bench .venv/bin/python bench/nightly.py --scenario batch-api
    ... --scenario batch-api --users 100000 --completion-delay 5 --fail-share 0.02

Night 1 submits the day after tomorrow through the stub's Batch API (own process, the real SDK);
after --completion-delay the batches are complete and night 2 collects them, then runs the
synchronous pass (the command, as a subprocess) for what is still missing. Prints requests by path,
tokens, estimated cost against all-standard (target: about 50%), the files and their sizes, and the
collect time (target: >= 5,000 stored users/s for 100,000 output lines).

The database is WIPED (users, fortunes, runs, batches): it refuses to run unless its name contains "bench".
"""

import argparse
import datetime as dt
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BASE,
    batch_django_setup,
    command_env,
    command_run,
    openai_batch_arguments,
    users_seed,
    wipe,
)

batch_django_setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from core.fortunes.pricing import Tier, cost_estimate  # noqa: E402
from core.models import FortuneResult, OpenAIBatch, User  # noqa: E402
from core.nightly.executors.openai_batch import openai_batch_collect, openai_batch_submit_ahead  # noqa: E402
from tests.stub_openai.server import stub_process  # noqa: E402

AHEAD = BASE + dt.timedelta(days=2)
NIGHT_2 = BASE + dt.timedelta(days=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=16, help="the synchronous pass's --workers")
    openai_batch_arguments(parser)
    args = parser.parse_args()
    name = str(settings.DATABASES["default"]["NAME"])
    if "bench" not in name:
        print(f"refusing to wipe database {name!r}: its name must contain 'bench'", file=sys.stderr)
        return 2
    return scenario_batch_api(users=args.users, completion_delay=args.completion_delay, fail_share=args.fail_share,
                              workers=args.workers)


def scenario_batch_api(*, users: int, completion_delay: float, fail_share: float, workers: int) -> int:
    print(f"== Batch API day ahead, {users:,} users ({connection.vendor}), model {settings.OPENAI_MODEL} ==")
    OpenAIBatch.objects.all().delete()
    wipe()
    users_seed(count=users, distinct=False)
    with stub_process() as stub:
        stub.batch_configure(completion_delay=completion_delay, fail_5xx=fail_share, seed=1)
        settings.FORTUNE_PROVIDER, settings.OPENAI_API_KEY = "openai", "sk-bench-stub"
        settings.OPENAI_BASE_URL = stub.base_url

        started = time.perf_counter()
        submitted = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
        submit_s = time.perf_counter() - started
        sizes = ", ".join(f"{count:,} lines/{size / 1e6:.1f} MB" for count, size in submitted.files)
        print(f"  night 1: submitted {submitted.requests:,} requests for {submitted.users:,} users in "
              f"{len(submitted.files)} file(s) [{sizes}] in {submit_s:.1f} s; estimated ${submitted.cost_batch} "
              f"(standard ${submitted.cost_standard})")

        time.sleep(completion_delay)
        stub.batch_state(timeout=600)  # the stub writes its output files when a batch is first read: not ours to time
        collected = openai_batch_collect(target_date=AHEAD)
        lines = collected.lines_ok + collected.lines_failed
        print(f"  night 2 collect: {lines:,} output lines, {collected.stored_users:,} users stored in "
              f"{collected.seconds:.2f} s = {collected.stored_users / max(collected.seconds, 1e-9):,.0f} "
              f"stored users/s ({lines / max(collected.seconds, 1e-9):,.0f} lines/s); "
              f"{collected.lines_failed:,} failed lines")

        eligible = User.objects.filter(is_active=True, birth_date_solar__isnull=False).count()
        missing = eligible - FortuneResult.objects.filter(for_date=AHEAD).count()
        # command_run passes --date BASE first; argparse keeps the last --date: night 2, target AHEAD.
        sync = command_run(env=command_env(**stub.env(), OPENAI_MODEL=settings.OPENAI_MODEL),
                           args=["--date", NIGHT_2.isoformat(), "--workers", str(workers),
                                 "--retry-cooldown", "0"]) if missing else None
    sync_requests = sync["run"].llm_requests if sync else 0
    sync_cost = Decimal(sync["run"].estimated_cost) if sync else Decimal(0)
    model = settings.OPENAI_MODEL
    sync_in, sync_out = (sync["run"].tokens_in, sync["run"].tokens_out) if sync else (0, 0)
    standard_all = collected.cost_standard + cost_estimate(model=model, tier=Tier.STANDARD, tokens_in=sync_in,
                                                           tokens_out=sync_out)
    paid = collected.cost_batch + sync_cost
    share = paid / standard_all if standard_all else Decimal(0)
    print(f"  requests by path: batch api {lines:,}, standard {sync_requests:,} (missing after collect: {missing:,})")
    print(f"  tokens: batch api {collected.tokens_in:,}/{collected.tokens_out:,}, standard {sync_in:,}/{sync_out:,}")
    print(f"  estimated cost ${paid} vs all-standard ${standard_all}: {share:.1%} (saving ${standard_all - paid})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

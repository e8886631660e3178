"""Benchmark of the nightly batch (generate_daily_fortunes). Not a test: prints its configuration and figures.

    createdb -h 127.0.0.1 -U postgres fortuna_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fortuna_bench .venv/bin/python bench/nightly.py --scenario local
    ... --scenario local --users 1000000
    ... --scenario openai --workers 10 64 --latency-ms 200
    ... --scenario rerun --users 100000

Scenarios (targets from issue 3, on a 2-core machine with PostgreSQL):
  local   N users (default 100,000), local provider, the command's whole wall time: >= 10,000 users/s;
          at 1,000,000 users: <= 150 s and peak RSS <= 400 MB.
  rerun   the same date again after a complete run: 0 LLM requests, <= 5 s.
  batch-api  the day-ahead Batch API through the stub (bench/openai_batch.py): N users (default 100,000),
          requests by path, tokens, cost against all-standard (about 50%), files and sizes, collect
          time (>= 5,000 stored users/s).
  scale   the celery backend (issue 9, bench/scale.py, which takes the flags after --scenario scale):
          the stub at 3 s ± 0.5 s enforcing 6,000 RPM, two Celery worker processes, 6,000 distinct
          inputs, through `generate_daily_fortunes --backend celery`; generations/s over the run
          against min(RPM/60, in flight/latency) (ratio >= 0.9), the threads backend with the same
          total in flight beside it, each worker's peak RSS.
  openai  the stub server (own process) at --latency-ms, every input distinct, per --workers value
          (--repeat rounds, each the bare loop then the command, the median printed last):
          generations/s >= 90% of a bare loop (one shared OpenAI client, ThreadPoolExecutor of the
          same size, the same request bodies, the same stub process, no database).

The database is WIPED (users, fortunes, runs): it refuses to run unless the database name contains "bench".
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BASE,
    TARGET,
    batch_django_setup,
    command_env,
    command_run,
    openai_batch_arguments,
    settle,
    users_seed,
    wipe,
)

batch_django_setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from core.models import FortuneGeneration, FortuneResult, NightlyRun, User  # noqa: E402


def _report(label: str, result: dict, users: int) -> None:
    run = result["run"]
    print(f"  {label}: exit {result['code']}, wall {result['wall']:.2f} s, {users / result['wall']:,.0f} users/s, "
          f"{run.generations / result['wall']:,.0f} generations/s, generations {run.generations:,}, "
          f"stored {run.generated:,}, LLM requests {run.llm_requests:,}, peak RSS {result['rss_mb']:.0f} MB, "
          f"status {run.status}")
    print(f"    {result['summary']}")


def scenario_local(*, users: int, rerun: bool, keep_users: bool = False) -> None:
    print(f"== local provider, {users:,} users ({connection.vendor}) ==")
    eligible = User.objects.filter(is_active=True, birth_date_solar__isnull=False).count()
    if keep_users and eligible == users:
        for model in (FortuneResult, FortuneGeneration, NightlyRun):
            model.objects.all().delete()
        print(f"  kept the {eligible:,} seeded eligible users; fortunes and runs deleted")
        if connection.vendor == "postgresql":
            settle()
    else:
        wipe()
        users_seed(count=users, distinct=False)
    first = command_run(env=command_env(FORTUNE_PROVIDER="local"), args=[])
    _report("first run", first, users)
    if rerun:
        again = command_run(env=command_env(FORTUNE_PROVIDER="local"), args=[])
        _report("rerun of the completed date", again, users)


def _bare_loop(*, base_url: str, workers: int, inputs: list) -> float:
    import openai

    from core.fortunes.prompt import build_messages
    from core.fortunes.providers.openai import chat_completion_create
    from core.fortunes.schema import GeneratedPart

    client = openai.OpenAI(api_key="sk-bench", base_url=base_url, max_retries=0, timeout=30)
    bodies = [build_messages(inp) for inp in inputs]

    def call(messages):
        # The provider's own call and validation (same request body), without the batch around it.
        completion = chat_completion_create(client, model=settings.OPENAI_MODEL, messages=messages)
        return GeneratedPart.model_validate_json(completion.choices[0].message.content)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(call, bodies):
            pass
    return len(inputs) / (time.perf_counter() - started)


def _fortunes_clear() -> None:
    """Back to no fortunes (users kept) between repeats; TRUNCATE leaves no dead rows to vacuum."""
    if connection.vendor == "postgresql":
        tables = [m._meta.db_table for m in (FortuneResult, FortuneGeneration, NightlyRun)]
        with connection.cursor() as cursor:
            cursor.execute(f"TRUNCATE {', '.join(tables)} CASCADE")  # and the run's chunks
    else:
        for model in (FortuneResult, FortuneGeneration, NightlyRun):
            model.objects.all().delete()


def scenario_openai(*, workers_list: list[int], latency_ms: float, per_worker: int, repeat: int) -> None:
    from core.nightly.plan import nightly_plan_pages
    from tests.stub_openai.server import start_stub_process

    for workers in workers_list:
        users = workers * per_worker
        print(f"== openai via stub at {latency_ms:g} ms, {workers} workers, {users:,} users, all inputs distinct "
              f"({connection.vendor}), {repeat} rounds of bare loop then command ==")
        wipe()
        users_seed(count=users, distinct=True)
        bound = workers / (latency_ms / 1000)
        whole_ratios, in_run_ratios = [], []
        with start_stub_process(latency_ms=latency_ms) as stub:
            generator = f"openai:{settings.OPENAI_MODEL}"
            inputs = [g.inp for page in nightly_plan_pages(target_date=TARGET, generator=generator)
                      for g in page.groups.values()]
            assert len(inputs) == users, (len(inputs), users)
            for round_number in range(1, repeat + 1):
                if round_number > 1:
                    _fortunes_clear()
                bare = _bare_loop(base_url=stub.base_url, workers=workers, inputs=inputs)
                stub.reset(config=False)
                result = command_run(env=command_env(**stub.env()), args=["--workers", str(workers)])
                requests = stub.counters()["requests"]
                run = result["run"]
                in_run = run.generations / run.duration.total_seconds()
                whole = run.generations / result["wall"]
                whole_ratios.append(whole / bare)
                in_run_ratios.append(in_run / bare)
                print(f" round {round_number}:")
                _report("command", result, users)
                print(f"  bound workers/latency = {bound:,.0f}/s; bare loop {bare:,.1f} generations/s; stub saw "
                      f"{requests:,} requests")
                print(f"  command: {whole:,.1f} generations/s over the whole wall time (start-up included) = "
                      f"{whole / bare:.1%} of the bare loop; {in_run:,.1f}/s over the run itself = {in_run / bare:.1%}")
        print(f"  {workers} workers, command / bare loop over {repeat} rounds: whole wall "
              f"{', '.join(f'{r:.1%}' for r in whole_ratios)} (median {statistics.median(whole_ratios):.1%}); "
              f"run itself {', '.join(f'{r:.1%}' for r in in_run_ratios)} "
              f"(median {statistics.median(in_run_ratios):.1%})")


def _scale_argv(argv: list[str]) -> tuple[str | None, list[str]]:
    """(--scenario, the other arguments): the scale scenario takes bench/scale.py's own flags."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--scenario")
    known, rest = pre.parse_known_args(argv)
    return known.scenario, rest


def _script(name: str, argv: list[str]) -> int:
    """Another benchmark, in its own process (the scripts share bench/common.py, never each other)."""
    return subprocess.run([sys.executable, str(Path(__file__).with_name(name)), *argv]).returncode


def main() -> int:
    scenario, rest = _scale_argv(sys.argv[1:])
    if scenario == "scale":
        return _script("scale.py", rest)

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("local", "rerun", "openai", "batch-api", "scale", "all"),
                        default="all")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 64])
    parser.add_argument("--latency-ms", type=float, default=200.0)
    parser.add_argument("--keep-users", action="store_true", help="local: reuse already seeded users")
    parser.add_argument("--per-worker", type=int, default=100, help="openai: users per worker (all distinct)")
    parser.add_argument("--repeat", type=int, default=3, help="openai: rounds of bare loop + command per --workers")
    openai_batch_arguments(parser)
    args = parser.parse_args()

    name = str(connection.settings_dict["NAME"])
    if "bench" not in name:
        parser.error(f"refusing to wipe database {name!r}: use a database whose name contains 'bench'")
    print(f"bench/nightly.py: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, database {connection.vendor} "
          f"{name}, base date {BASE}, args {vars(args)}")
    call_command("migrate", verbosity=0)
    if args.scenario in ("local", "all"):
        scenario_local(users=args.users, rerun=args.scenario == "all", keep_users=args.keep_users)
    if args.scenario == "rerun":
        scenario_local(users=args.users, rerun=True, keep_users=args.keep_users)
    if args.scenario in ("openai", "all"):
        scenario_openai(workers_list=args.workers, latency_ms=args.latency_ms, per_worker=args.per_worker,
                        repeat=args.repeat)
    if args.scenario == "batch-api":
        return _script("openai_batch.py", ["--users", str(args.users), "--completion-delay", str(args.completion_delay),
                                        "--fail-share", str(args.fail_share), "--workers", str(max(args.workers))])
    return 0


if __name__ == "__main__":
    sys.exit(main())

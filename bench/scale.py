"""Benchmark of the celery backend at a real model's latency (issue 9). Not a test: prints figures.

    createdb -h 127.0.0.1 -U postgres fortuna_bench
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/fortuna_bench REDIS_URL=redis://127.0.0.1:6379/0 \
        .venv/bin/python bench/nightly.py --scenario scale          # 6,000 inputs, 3 s ± 0.5 s, 6,000 RPM
    ... bench/nightly.py --scenario scale --users 300 --latency-ms 300 --jitter-ms 50 --inflight 16  # small
    (bench/scale.py takes the same flags.)

The stub (own process) answers after --latency-ms ± --jitter-ms and enforces an account limit of
--rpm over a sliding minute. Two Celery worker processes (threads pool, --inflight calls in flight
each) generate every input (all distinct), started and answering before anything is timed; the
night runs through the command, `generate_daily_fortunes --backend celery`, as the cron runs it.
Printed per backend: generations/s over the run (the NightlyRun's own start to finish: planning,
dispatch, the first answers' latency and the last chunk's tail included; the command's whole wall,
with Django's start-up, beside it), the bound min(RPM/60, total in flight / latency), their ratio
(target ≥ 0.9), the stub's 429s, each worker's peak RSS; then the threads backend (the same command)
with the same total in flight. The limiter's on-demand reserve is 0 here: there is no web traffic to
keep a share for.

Why the earlier small runs fell short (0.78, 0.49), and what changed: the chunk size was 200 whatever
the run's size, so 300 inputs made two chunks, one per process, and the process with the 100-input
chunk sat idle for half the run (and a big last chunk leaves one process working alone at the end);
the chunk size now defaults to at most the calls in flight per process and at least four chunks per
process (--chunk-size overrides). The coordinator polled the database once a second, so up to a
second was added after the last chunk (now POLL_SECONDS, half that); the timed window began before
the workers' own start-up was over only if a ping raced it (they now answer before anything is
timed), and the run's own timestamps are what is measured.

The database is WIPED (users, fortunes, runs): it refuses to run unless its name contains "bench".
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    BASE,
    ROOT,
    batch_django_setup,
    command_env,
    command_run,
    users_seed,
    vm_hwm_kb,
    wipe,
)

batch_django_setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from kombu import pools  # noqa: E402

from core.models import FortuneGeneration, FortuneResult, NightlyRun  # noqa: E402
from fortuna_api.celery import app  # noqa: E402
from tests.stub_openai.server import start_stub_process  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/nightly.py --scenario scale", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=6000, help="eligible users, every input distinct")
    parser.add_argument("--latency-ms", type=float, default=3000)
    parser.add_argument("--jitter-ms", type=float, default=500)
    parser.add_argument("--rpm", type=int, default=6000, help="the account limit the stub enforces (and configured)")
    parser.add_argument("--inflight", type=int, default=160, help="FORTUNE_CELERY_INFLIGHT per worker process")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="inputs per chunk (default: chunk_size_for(), from --users, --processes, --inflight)")
    parser.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL") or settings.REDIS_URL)
    parser.add_argument("--skip-threads", action="store_true", help="only the celery backend")
    parser.add_argument("--clients-only", action="store_true",
                        help="only compare threads and AsyncOpenAI at --inflight calls in flight (no database)")
    return parser.parse_args(argv)


def clients_compare(*, args) -> None:
    """Calls in flight in one process, threads (the sync SDK, as the workers use it) against asyncio
    (AsyncOpenAI): requests/s and client CPU per request, the same stub, the same request bodies."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import openai
    from openai.types.chat import ChatCompletion

    from core.fortunes.inputs import GenerationInput
    from core.fortunes.prompt import build_messages
    from core.fortunes.providers.openai import chat_completion_create, response_format

    inputs = [GenerationInput(for_date=BASE, year="甲子", month="丙寅", day="戊午", hour=None, gender="F",
                              generator="openai:gpt-4o-mini", nonce=str(n)) for n in range(args.users)]
    bodies = [build_messages(inp) for inp in inputs]
    with start_stub_process(latency_ms=args.latency_ms, latency_jitter_ms=args.jitter_ms) as stub:
        client = openai.OpenAI(api_key="sk-bench", base_url=stub.base_url, max_retries=0, timeout=60)
        cpu, t0 = time.process_time(), time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.inflight) as pool:
            list(pool.map(lambda m: chat_completion_create(client, model="gpt-4o-mini", messages=m), bodies))
        wall, used = time.perf_counter() - t0, time.process_time() - cpu
        client.close()
        print(f"  threads x{args.inflight}: {len(bodies) / wall:.1f} req/s, {1000 * used / len(bodies):.2f} ms CPU/req")

        async def run_async() -> None:
            aclient = openai.AsyncOpenAI(api_key="sk-bench", base_url=stub.base_url, max_retries=0, timeout=60)
            gate = asyncio.Semaphore(args.inflight)

            async def one(messages):
                async with gate:
                    # The same request the sync path posts (chat_completion_create's body, client.post).
                    await aclient.post("/chat/completions", cast_to=ChatCompletion, body={
                        "model": "gpt-4o-mini", "messages": messages, "response_format": response_format()})

            await asyncio.gather(*(one(m) for m in bodies))
            await aclient.close()

        stub.reset()
        cpu, t0 = time.process_time(), time.perf_counter()
        asyncio.run(run_async())
        wall, used = time.perf_counter() - t0, time.process_time() - cpu
        print(f"  asyncio x{args.inflight}: {len(bodies) / wall:.1f} req/s, {1000 * used / len(bodies):.2f} ms CPU/req")


def start_worker(*, env: dict, inflight: int, queue: str, log: Path) -> tuple[subprocess.Popen, str]:
    node = f"bench-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    argv = [sys.executable, "-m", "celery", "-A", "fortuna_api", "worker", "-P", "threads", "-c", "2", "-O", "fair",
            "--without-heartbeat", "--without-gossip", "--without-mingle", "-n", node, "--loglevel", "WARNING"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**env, "FORTUNE_CELERY_INFLIGHT": str(inflight),
                                                 "FORTUNE_CELERY_QUEUE": queue},
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, node


def wait_ready(nodes: list[str], procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 60
    waiting = set(nodes)
    while waiting and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            sys.exit("a worker exited at start (see its log)")
        for reply in app.control.ping(destination=list(waiting), timeout=0.5):
            waiting -= set(reply)
    if waiting:
        sys.exit(f"workers did not answer: {sorted(waiting)}")


def chunk_size_for(*, users: int, processes: int, inflight: int) -> int:
    """At most the calls in flight per process (two chunk slots then keep the pool full while one
    chunk's last answers come in, and the last chunk is short), at least four chunks per process (no
    process idles while another works through a big chunk), never above the command's default."""
    from core.nightly.options import CHUNK_SIZE

    return max(1, min(CHUNK_SIZE, inflight, users // (processes * 4)))


class RssSampler:
    """Peak RSS (VmHWM) of the worker processes, sampled every half second in a thread."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        import threading

        self.procs = procs
        self.peaks = {p.pid: 0 for p in procs}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while not self.done.wait(0.5):
            self.take()

    def take(self) -> None:
        for p in self.procs:
            self.peaks[p.pid] = max(self.peaks[p.pid], vm_hwm_kb(p.pid))

    def stop(self) -> dict[int, int]:
        self.done.set()
        self.take()
        return self.peaks


def _limiter_clear() -> None:
    from core.limiter import REDIS_KEY, RedisRateLimiter

    limiter = RedisRateLimiter(None, url=settings.REDIS_URL, key=REDIS_KEY)
    limiter.clear()
    limiter.close()


def _report(label: str, *, result: dict, bound: float, extra: str = "") -> None:
    run = result["run"]
    seconds = (run.finished_at - run.started_at).total_seconds() if run and run.finished_at else float("nan")
    rate = run.generations / seconds
    print(f"  {label}: {run.generations:,} generations; over the run {seconds:.1f} s = {rate:.1f}/s, "
          f"ratio {rate / bound:.2f} to the bound {bound:.1f}/s; the command's whole wall {result['wall']:.1f} s "
          f"= {run.generations / result['wall']:.1f}/s (ratio {run.generations / result['wall'] / bound:.2f}); "
          f"status {run.status}, LLM requests {run.llm_requests:,}, exit {result['code']}{extra}")


def celery_round(*, args, stub_env: dict, chunk_size: int) -> None:
    from core.nightly.executors.celery import celery_backend_check

    queue = f"fortuna-bench-{uuid.uuid4().hex[:6]}"
    app.conf.broker_url, app.conf.task_default_queue = args.broker, queue
    pools.reset()
    settings.CELERY_BROKER_URL = args.broker
    celery_backend_check()
    _limiter_clear()
    env = {**command_env(**stub_env), "CELERY_BROKER_URL": args.broker, "REDIS_URL": settings.REDIS_URL,
           "OPENAI_RPM": str(args.rpm), "OPENAI_ON_DEMAND_RESERVE": "0", "OPENAI_TIMEOUT": "60",
           "FORTUNE_CELERY_QUEUE": queue}
    logs = Path(tempfile.mkdtemp(prefix="fortuna-scale-"))
    started = [start_worker(env=env, inflight=args.inflight, queue=queue, log=logs / f"worker{n}.log")
               for n in range(args.processes)]
    procs, nodes = [p for p, _ in started], [n for _, n in started]
    sampler = RssSampler(procs)
    try:
        wait_ready(nodes, procs)  # start-up stays outside the timed run
        result = command_run(env=env, args=["--backend", "celery", "--chunk-size", str(chunk_size),
                                            "--rpm", str(args.rpm), "--retry-cooldown", "0"])
    finally:
        peaks = sampler.stop()
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    total_inflight = args.processes * args.inflight
    bound = min(args.rpm / 60, total_inflight / (args.latency_ms / 1000))
    _report(f"celery: {args.processes} workers × {args.inflight} in flight, chunk {chunk_size}", result=result,
            bound=bound)
    print(f"    worker peak RSS: {', '.join(f'{kb / 1024:.0f} MB' for kb in peaks.values())}; logs in {logs}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.clients_only:
        clients_compare(args=args)
        return 0
    if "bench" not in str(connection.settings_dict["NAME"]):
        sys.exit("refusing to wipe a database whose name does not contain 'bench'")
    if connection.vendor != "postgresql":
        sys.exit("bench/scale.py needs PostgreSQL (workers write concurrently)")
    if not settings.REDIS_URL or not args.broker:
        sys.exit("set REDIS_URL (the shared limiter, and the broker unless CELERY_BROKER_URL is set)")
    chunk_size = args.chunk_size or chunk_size_for(users=args.users, processes=args.processes, inflight=args.inflight)
    print(f"== scale: {args.users:,} distinct inputs, stub {args.latency_ms:g} ± {args.jitter_ms:g} ms, "
          f"{args.rpm:,} RPM enforced ==")
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    wipe()
    users_seed(count=args.users, distinct=True)
    with start_stub_process(latency_ms=args.latency_ms, latency_jitter_ms=args.jitter_ms,
                            account_rpm=args.rpm) as stub:
        celery_round(args=args, stub_env=stub.env(), chunk_size=chunk_size)
        print(f"    stub: {stub.counters()['account']}")
        if args.skip_threads:
            return 0
        for model in (FortuneResult, FortuneGeneration, NightlyRun):
            model.objects.all().delete()
        stub.reset(config=True)
        _limiter_clear()
        from core.management.commands.generate_daily_fortunes import MAX_WORKERS

        workers = args.processes * args.inflight
        if workers > MAX_WORKERS:
            print(f"  (threads backend capped at the command's --workers limit {MAX_WORKERS}, not {workers})")
            workers = MAX_WORKERS
        # The same limiter as the celery round: Redis, the account's RPM, no on-demand reserve.
        env = command_env(**stub.env(), OPENAI_TIMEOUT="60", REDIS_URL=settings.REDIS_URL, OPENAI_ON_DEMAND_RESERVE="0")
        result = command_run(env=env, args=["--workers", str(workers), "--rpm", str(args.rpm), "--retry-cooldown", "0"])
        bound = min(args.rpm / 60, workers / (args.latency_ms / 1000))
        _report(f"threads: --workers {workers}", result=result, bound=bound,
                extra=f"; peak RSS {result['rss_mb']:.0f} MB")
        print(f"    stub: {stub.counters()['account']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

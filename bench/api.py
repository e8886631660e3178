"""API benchmark: /fortune/today against a trivial authenticated view and against the idiomatic DRF
implementation of the same read (bench/views.py), on gunicorn from the Procfile.

Run from the repo root:  .venv/bin/python bench/api.py  [--users 2000] [--rounds 5] [--duration 4]

Prepares a PostgreSQL database (default: drops and creates `fortuna_bench_api` with createdb on
127.0.0.1; or --database-url), migrates it, bulk-creates users with tokens and today's (KST)
fortunes, starts the Procfile's web line with WEB_CONCURRENCY=2 and production settings (bench/settings.py:
production's, plus the reference view /api/ping; --balanced: bench/gunicorn.conf.py's worker), then
loads both endpoints with wrk (a Lua script rotating valid tokens; a Python load generator when
wrk is missing) at 4, 32 and 64 connections, in rounds: within a round every endpoint runs once,
next to the others (the order flips each round). Prints the median rps, p50, p99 and server CPU per
request of each endpoint, and the median of the rounds' ratios against the issue's targets.
--reference also serves FACTS' reference setup (bench/reference_settings.py) and loads it in the
same rounds: the calibration for the absolute 4-connection target. Figures, not assertions: see
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    BENCH_DB,
    DRF_PATH,
    FORTUNE_PATH,
    GUNICORN_BENCH_CONFIG,
    PG_SERVER,
    PING_PATH,
    ROOT,
    cpu_ticks,
    data_seed,
    database_migrate,
    database_prepare,
    settings_module_for,
    tokens_read,
    tree_export,
)
from tests.deploy.server import (  # noqa: E402
    PROXY_HEADERS,
    free_port,
    production_env,
    web_server_start,
    web_server_stop,
)

REFERENCE_LABEL = "reference ping"  # --reference: bench/reference_settings.py, 2 sync workers

# Targets from issue 4.
TARGET_RPS_RATIO_32 = 0.60
TARGET_P99_RATIO_32 = 1.5
TARGET_P99_MS_4 = 10.0

WRK_SCRIPT = r"""
local tokens = {}
local counter = 0

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  -- threads start at different offsets so they do not walk the same users in step
  counter = math.random(#tokens)
  wrk.headers["X-Forwarded-Proto"] = "https"
end

function request()
  counter = (counter % #tokens) + 1
  wrk.headers["Authorization"] = "Token " .. tokens[counter]
  return wrk.format("GET", wrk.path)
end

function done(summary, latency, requests)
  io.write(string.format(
    "BENCH_JSON {\"requests\": %d, \"duration_us\": %d, \"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, " ..
    "\"max_us\": %d, \"non_2xx\": %d, \"socket_errors\": %d}\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def load_wrk(*, url: str, connections: int, duration: int, tokens_file: Path, script: Path) -> dict:
    threads = 1 if connections < 8 else 2  # this box has 2 cores, shared with the server
    out = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "10s",
         "-s", str(script), url, "--", str(tokens_file)],
        capture_output=True, text=True, check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH_JSON "))
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds = raw["duration_us"] / 1e6
    return {
        "rps": raw["requests"] / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "requests": raw["requests"],
        "errors": raw["non_2xx"] + raw["socket_errors"],
    }


def load_python(*, url: str, connections: int, duration: int, tokens: list[str]) -> dict:
    """Fallback closed-loop load generator (one keep-alive connection per thread)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    stop_at = time.monotonic() + duration
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections

    def run(slot: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        i = slot
        while time.monotonic() < stop_at:
            i = (i + connections) % len(tokens)
            headers = {**PROXY_HEADERS, "Authorization": f"Token {tokens[i]}"}
            start = time.perf_counter()
            try:
                conn.request("GET", parts.path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors[slot] += 1
            except (OSError, http.client.HTTPException):
                errors[slot] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            latencies[slot].append(time.perf_counter() - start)
        conn.close()

    started = time.monotonic()
    workers = [threading.Thread(target=run, args=(slot,)) for slot in range(connections)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.monotonic() - started
    every = sorted(x for per in latencies for x in per)
    cut = statistics.quantiles(every, n=100)
    return {
        "rps": len(every) / elapsed, "p50_ms": cut[49] * 1000, "p99_ms": cut[98] * 1000,
        "max_ms": every[-1] * 1000, "requests": len(every), "errors": sum(errors),
    }


def warm(*, base_url: str, tokens: list[str], path: str) -> None:
    # Every worker thread opens its persistent DB connection before measuring.
    for token in tokens[:200]:
        req = urllib.request.Request(base_url + path, headers={**PROXY_HEADERS, "Authorization": f"Token {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()


def server_pids(server, *, database: str) -> tuple[list[str], list[str]]:
    """The gunicorn workers of a server, and the PostgreSQL backends of the database (same host only)."""
    def pgrep(*argv: str) -> list[str]:
        return subprocess.run(["pgrep", *argv], capture_output=True, text=True).stdout.split()

    return pgrep("-P", str(server.process.pid)), pgrep("-f", f"postgres: .* {database} ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--duration", type=int, default=4, help="seconds per load run")
    parser.add_argument("--rounds", type=int, default=5,
                        help="runs per endpoint and connection count, the endpoints taking turns")
    parser.add_argument("--connections", default="4,32,64")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""))
    parser.add_argument("--reuse-data", action="store_true", help="skip creating the database and the data")
    parser.add_argument("--worker-class", default="", help="override the Procfile's (e.g. sync, to compare)")
    parser.add_argument("--threads", default="", help="GUNICORN_THREADS for the server")
    parser.add_argument("--balanced", action="store_true",
                        help="bench/gunicorn.conf.py: new connections shared evenly between the worker processes")
    parser.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", ""),
                        help="REDIS_URL for the server (as on Railway: throttles and the token cache in Redis)")
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator, not wrk")
    parser.add_argument("--reference", action="store_true",
                        help="also load FACTS' reference (trivial token-auth view, 2 sync workers, minimal settings)")
    parser.add_argument("--against", default="",
                        help="also serve this git revision (same settings), its endpoints loaded in the same rounds")
    args = parser.parse_args()
    connection_counts = [int(c) for c in args.connections.split(",")]

    database_url = args.database_url or f"{PG_SERVER}/{BENCH_DB}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    tokens_file = tmp / "tokens.txt"
    if args.reuse_data:
        database_migrate(database_url=database_url)  # the data stays; a newer tree's migrations apply
        tokens = tokens_read(database_url=database_url)
    else:
        database_url = database_prepare(database_url=args.database_url or None)
        database_migrate(database_url=database_url)
        started = time.perf_counter()
        tokens = data_seed(database_url=database_url, users=args.users)
        print(f"seeded {len(tokens)} users with tokens and today's fortunes in {time.perf_counter() - started:.1f} s")
    tokens_file.write_text("\n".join(tokens) + "\n")
    script = tmp / "rotate_tokens.lua"
    script.write_text(WRK_SCRIPT)
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    database = database_url.rsplit("/", 1)[1]

    extra = {"WEB_CONCURRENCY": "2", "LOG_LEVEL": "warning"}
    if args.redis_url:
        extra["REDIS_URL"] = args.redis_url
    if args.threads:
        extra["GUNICORN_THREADS"] = args.threads
    if args.balanced:
        extra["GUNICORN_BALANCED_WORKER"] = "1"  # how trees older than bench/gunicorn.conf.py opted in
    env = production_env(database_url=database_url, port=0, extra=extra)
    argv_extra = ["--worker-class", args.worker_class] if args.worker_class else []
    # The access log would cost the server as much as the view itself; production keeps it.
    argv_extra += ["--access-logfile", "/dev/null"]

    def served(tree: Path) -> tuple[dict[str, str], tuple[str, ...]]:
        """The environment and extra gunicorn flags that serve /api/ping (and --balanced) in a tree."""
        config = tree / GUNICORN_BENCH_CONFIG.relative_to(ROOT)
        balanced = ("--config", str(config)) if args.balanced and config.exists() else ()
        return {**env, "DJANGO_SETTINGS_MODULE": settings_module_for(tree)}, (*balanced, *argv_extra)

    def load(url: str, conns: int) -> dict:
        if use_wrk:
            return load_wrk(url=url, connections=conns, duration=args.duration, tokens_file=tokens_file, script=script)
        return load_python(url=url, connections=conns, duration=args.duration, tokens=tokens)

    # Both servers stay up and the endpoints take turns, round after round: this box's speed drifts
    # by a third within minutes, so a ratio is only fair between runs made next to each other.
    servers = {}
    try:
        app_env, app_args = served(ROOT)
        servers["app"] = web_server_start(env=app_env, port=free_port(), extra_args=app_args,
                                          log_path=tmp / "gunicorn.log")
        endpoints = [(PING_PATH, "app", PING_PATH), (FORTUNE_PATH, "app", FORTUNE_PATH), (DRF_PATH, "app", DRF_PATH)]
        if args.against:
            against = tree_export(revision=args.against, into=tmp / "against")
            against_env, against_args = served(against)
            servers["against"] = web_server_start(
                env=against_env, port=free_port(), extra_args=against_args, log_path=tmp / "against.log",
                source_dir=against,
            )
            endpoints += [(f"{args.against} {PING_PATH}", "against", PING_PATH),
                          (f"{args.against} {FORTUNE_PATH}", "against", FORTUNE_PATH)]
        if args.reference:
            servers["reference"] = web_server_start(
                env={**env, "DJANGO_SETTINGS_MODULE": "bench.reference_settings"}, port=free_port(),
                log_path=tmp / "reference.log",
                extra_args=("--worker-class", "sync", "--access-logfile", "/dev/null"),
            )
            endpoints.append((REFERENCE_LABEL, "reference", PING_PATH))
        for _, name, path in endpoints:
            warm(base_url=servers[name].base_url, tokens=tokens, path=path)
        runs: dict[tuple[str, int], list[dict]] = {(label, conns): [] for conns in connection_counts
                                                   for label, _, _ in endpoints}
        for conns in connection_counts:
            for round_no in range(args.rounds):
                for label, name, path in endpoints if round_no % 2 == 0 else endpoints[::-1]:
                    workers, backends = server_pids(servers[name], database=database)
                    before = {pid: cpu_ticks(pid) for pid in workers + backends}
                    result = load(servers[name].base_url + path, conns)
                    used = {pid: cpu_ticks(pid) - ticks for pid, ticks in before.items()}
                    result["cpu_ms"] = sum(used.values()) * 1000 / os.sysconf("SC_CLK_TCK") / result["requests"]
                    # How the load spread over the worker processes: wrk's few long-lived connections can
                    # all land on one (docs/BENCHMARKS.md, gunicorn worker processes).
                    result["busiest"] = max(used[pid] for pid in workers) / max(1, sum(used[pid] for pid in workers))
                    runs[(label, conns)].append(result)
    finally:
        for server in servers.values():
            web_server_stop(server)

    threads = args.threads or "default (gunicorn.conf.py)"
    print(
        f"\ngunicorn: Procfile web line, WEB_CONCURRENCY=2, worker class {args.worker_class or 'gthread'}, "
        f"threads {threads}; load: {'wrk' if use_wrk else 'python'}, {args.rounds} rounds of {args.duration} s per "
        f"endpoint and connection count, endpoints in turn; {len(tokens)} tokens rotated; cpus {os.cpu_count()}"
    )
    print("medians over the rounds; cpu: server CPU per request (gunicorn workers + the database's backends); "
          "busiest: the busiest worker process's share of the workers' CPU")
    width = max(16, *(len(label) + 2 for label, _, _ in endpoints))
    print(f"{'endpoint':<{width}}{'conns':>6}{'rps':>10}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'cpu ms':>8}"
          f"{'busiest':>9}{'errors':>8}")
    for (label, conns), rounds in runs.items():
        med = {key: statistics.median(r[key] for r in rounds) for key in _MEDIANS}
        print(f"{label:<{width}}{conns:>6}{med['rps']:>10.0f}{med['p50_ms']:>9.2f}{med['p99_ms']:>9.2f}"
              f"{max(r['max_ms'] for r in rounds):>9.1f}{med['cpu_ms']:>8.2f}{med['busiest']:>9.0%}"
              f"{sum(r['errors'] for r in rounds):>8}")
    print()
    if args.reference:
        print(f"{REFERENCE_LABEL}: FACTS' setup (bench/reference_settings.py: DRF TokenAuthentication, no throttles "
              f"or middleware beyond CommonMiddleware, persistent connections, 2 sync workers); FACTS measured "
              f"~2,000 rps, p99 ≈ 4 ms at 4 connections")
    print("ratios: the median of each round's fortune/ping (runs made next to each other); [min–max] over the rounds")
    if args.against:
        for conns in connection_counts:
            against = [runs[(f"{args.against} {path}", conns)] for path in (FORTUNE_PATH, PING_PATH)]
            print(f"{args.against}: {_ratios_line(*against, conns)}")
        print("this tree:")
    for conns in connection_counts:
        fortune, ping = runs[(FORTUNE_PATH, conns)], runs[(PING_PATH, conns)]
        line = _ratios_line(fortune, ping, conns)
        rps_ratio = statistics.median(f["rps"] / p["rps"] for f, p in zip(fortune, ping, strict=True))
        p99_ratio = statistics.median(f["p99_ms"] / p["p99_ms"] for f, p in zip(fortune, ping, strict=True))
        if conns == 32:
            ok = rps_ratio >= TARGET_RPS_RATIO_32 and p99_ratio <= TARGET_P99_RATIO_32
            line += f"  [target rps ≥ {TARGET_RPS_RATIO_32:.0%}, p99 ≤ {TARGET_P99_RATIO_32}x: {_verdict(ok)}]"
        if conns == 4:
            p99 = statistics.median(f["p99_ms"] for f in fortune)
            ok = p99 <= TARGET_P99_MS_4
            line += f"  [target fortune p99 ≤ {TARGET_P99_MS_4:.0f} ms: {p99:.2f} ms, {_verdict(ok)}]"
            if args.reference:
                reference = statistics.median(r["p99_ms"] for r in runs[(REFERENCE_LABEL, conns)])
                line += f" (reference ping {reference:.2f} ms)"
        print(line)
    print("against the idiomatic DRF implementation of the same read (RetrieveAPIView + ModelSerializer, "
          f"{DRF_PATH}), per round:")
    for conns in connection_counts:
        fortune, drf = runs[(FORTUNE_PATH, conns)], runs[(DRF_PATH, conns)]
        rps = [f["rps"] / d["rps"] for f, d in zip(fortune, drf, strict=True)]
        cpu = [f["cpu_ms"] / d["cpu_ms"] for f, d in zip(fortune, drf, strict=True)]
        print(f"{conns:>3} conns: fortune/drf rps {statistics.median(rps):.2f} [{min(rps):.2f}–{max(rps):.2f}], "
              f"cpu per request {statistics.median(cpu):.2f}x [{min(cpu):.2f}–{max(cpu):.2f}]  "
              f"[keep: rps ≥ 1.00: {_verdict(statistics.median(rps) >= 1.0)}]")
    shutil.rmtree(tmp, ignore_errors=True)


_MEDIANS = ("rps", "p50_ms", "p99_ms", "cpu_ms", "busiest")


def _ratios_line(fortune: list[dict], ping: list[dict], conns: int) -> str:
    rps = [f["rps"] / p["rps"] for f, p in zip(fortune, ping, strict=True)]
    p99 = [f["p99_ms"] / p["p99_ms"] for f, p in zip(fortune, ping, strict=True)]
    return (f"{conns:>3} conns: fortune/ping rps {statistics.median(rps):.2f} [{min(rps):.2f}–{max(rps):.2f}], "
            f"p99 {statistics.median(p99):.2f}x [{min(p99):.2f}–{max(p99):.2f}]")


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


if __name__ == "__main__":
    try:
        main()
    except urllib.error.URLError as exc:
        sys.exit(f"the server did not answer: {exc}")

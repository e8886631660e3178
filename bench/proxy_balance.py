"""How requests spread over gunicorn's worker processes behind a pooling reverse proxy (issue 8, item 7).

Run from the repo root:  .venv/bin/python bench/proxy_balance.py  [--trials 3] [--duration 8]

For each worker class (stock `gthread`, then the balanced one), per trial: starts the Procfile's web
line (WEB_CONCURRENCY=2, production settings, an empty SQLite database: /healthz only runs SELECT 1)
with an access log of worker pids, puts Debian's nginx in front of it (config and prefix in a temp
dir, bound to 127.0.0.1, `upstream { keepalive N; }` so nginx keeps a pool of connections to
gunicorn, as Railway's proxy or any load balancer does), loads nginx with wrk, then stops both.
Prints per worker the requests it served (access-log lines) and the CPU ticks it used (/proc), and
the busiest worker's share. Counts, not latencies: they mean something on a busy box.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import GUNICORN_BENCH_CONFIG, cpu_ticks  # noqa: E402
from tests.deploy.server import free_port, production_env, web_server_start, web_server_stop  # noqa: E402

# The balanced worker needs its config (the arbiter's pre_fork hook gives each worker its slot).
WORKER_ARGS = {"gthread": ("--worker-class", "gthread"), "balanced": ("--config", str(GUNICORN_BENCH_CONFIG))}
NGINX_CONF = """
daemon off;
worker_processes {nginx_workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream gunicorn {{
        server 127.0.0.1:{upstream_port};
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://gunicorn;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
        }}
    }}
}}
"""


def worker_pids(master: int) -> list[int]:
    return sorted(int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split())


def nginx_start(
    *, prefix: Path, upstream_port: int, keepalive: int, nginx_workers: int
) -> tuple[subprocess.Popen, int]:
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, upstream_port=upstream_port, keepalive=keepalive,
                                      port=port, nginx_workers=nginx_workers))
    process = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/healthz"]).returncode:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"nginx did not start: {(prefix / 'error.log').read_text()[-2000:]}")
        time.sleep(0.1)
    return process, port


def nginx_stop(process: subprocess.Popen) -> None:
    process.terminate()  # SIGTERM: nginx's fast shutdown
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def trial(*, worker: str, args: argparse.Namespace, workdir: Path) -> tuple[list[int], list[int]]:
    access_log = workdir / "access.log"
    access_log.unlink(missing_ok=True)
    env = production_env(database_url=f"sqlite:///{workdir / 'empty.sqlite3'}", port=0,
                         extra={"LOG_LEVEL": "warning"})
    server = web_server_start(env=env, log_path=workdir / "gunicorn.log", extra_args=(
        *WORKER_ARGS[worker], "--access-logfile", str(access_log),
        "--access-logformat", "%(p)s",
    ))
    prefix = Path(tempfile.mkdtemp(prefix="nginx-", dir=workdir))
    nginx, port = None, server.port
    try:
        if not args.no_proxy:
            nginx, port = nginx_start(prefix=prefix, upstream_port=server.port, keepalive=args.keepalive,
                                      nginx_workers=args.nginx_workers)
        time.sleep(1.5)  # both workers booted and (balanced) published their slots
        pids = worker_pids(server.process.pid)
        access_log.write_text("")  # start counting at the load
        before = [cpu_ticks(pid) for pid in pids]
        subprocess.run(["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", f"http://127.0.0.1:{port}/healthz"],
                       check=True, stdout=subprocess.DEVNULL)
        ticks = [cpu_ticks(pid) - start for pid, start in zip(pids, before, strict=True)]
    finally:
        if nginx is not None:
            nginx_stop(nginx)
        web_server_stop(server)
    served = collections.Counter(line.strip().strip("<>") for line in access_log.read_text().splitlines())
    return [served.get(str(pid), 0) for pid in pids], ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8, help="seconds of wrk load per trial")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections to nginx")
    parser.add_argument("--keepalive", type=int, default=32, help="nginx upstream keepalive pool size")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--no-proxy", action="store_true", help="wrk straight to gunicorn (the earlier setup)")
    parser.add_argument("--workers", default="gthread,balanced", help="worker classes to compare, in order")
    args = parser.parse_args()
    for tool in ("nginx", "wrk", "curl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: apt-get install -y nginx wrk curl")
    proxy = "no proxy" if args.no_proxy else f"nginx keepalive {args.keepalive}, {args.nginx_workers} nginx worker(s)"
    print(f"{proxy}, wrk -c{args.connections} "
          f"-d{args.duration}s on /healthz, gunicorn WEB_CONCURRENCY=2 GUNICORN_THREADS="
          f"{os.environ.get('GUNICORN_THREADS', '16')}")
    with tempfile.TemporaryDirectory(prefix="proxy-balance-") as tmp:
        for worker in args.workers.split(","):
            for number in range(1, args.trials + 1):
                served, ticks = trial(worker=worker, args=args, workdir=Path(tmp))
                share = max(served) / max(sum(served), 1)
                print(f"{worker:9} trial {number}: requests per worker {served}  CPU ticks {ticks}  "
                      f"busiest {share:.0%}", flush=True)


if __name__ == "__main__":
    main()

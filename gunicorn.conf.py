"""Gunicorn settings for the web service; the Procfile's web line loads this file.

gthread: a request waiting on the LLM (on-demand generation, bounded by FORTUNE_ON_DEMAND_TIMEOUT,
default 20 s) holds one thread, not a whole worker process, so /healthz and stored fortunes keep
being served. `timeout` (120 s) is the arbiter's kill switch for a stuck worker and stays well
above that budget.
"""

import os

from fortuna_api.env import env_choice, env_int

bind = f"0.0.0.0:{env_int('PORT', 8000, min_value=1, max_value=65535)}"
# Stock gthread: behind a proxy that pools its connections to gunicorn (Railway's, nginx's keepalive)
# requests spread over the processes without help (docs/BENCHMARKS.md). The benchmarks' balanced
# worker, for clients that reach gunicorn directly, is bench/gunicorn.conf.py's, never production's.
worker_class = "gthread"
workers = env_int("WEB_CONCURRENCY", 4, min_value=1, max_value=256)
# A gthread worker accepts connections regardless of free threads and queues them in its pool, so a
# worker whose threads all wait on the LLM would delay everything it accepted, /healthz included.
# Settings cap on-demand generations at threads − 4 per process (FORTUNE_ON_DEMAND_MAX_CONCURRENT)
# and answer the excess with 503 at once. Each thread keeps one DB connection:
# WEB_CONCURRENCY × threads must stay below PostgreSQL's max_connections.
threads = env_int("GUNICORN_THREADS", 16, min_value=1, max_value=1024)
timeout = 120
# Railway sends SIGTERM and kills after its draining time (railway.toml drainingSeconds = 30):
# finish in-flight requests, including an on-demand generation, before that.
graceful_timeout = 25
keepalive = 5

accesslog = "-"
errorlog = "-"
loglevel = env_choice("GUNICORN_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical"))

# Gunicorn ≥ 25.1 opens a control socket at a fixed per-user path ($HOME/.gunicorn/gunicorn.ctl):
# two servers on one host (tests, the benchmark, a second service) would fight over it.
control_socket_disable = True
# The heartbeat file: /dev/shm avoids stalls when the container's disk is slow.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

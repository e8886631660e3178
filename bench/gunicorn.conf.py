"""gunicorn.conf.py with the balanced worker (bench/gunicorn_worker.py), for benchmarks and tests only.

Production runs stock gthread (gunicorn.conf.py). Clients that reach gunicorn directly with a few
long-lived connections (wrk, a test's keep-alive clients) can all land on one worker process; this
config shares new connections evenly so that a measurement or a cross-process test loads both.
Pass it after the Procfile's flags (`--config bench/gunicorn.conf.py`): the last --config wins.
"""

import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

globals().update({name: value for name, value in runpy.run_path(str(ROOT / "gunicorn.conf.py")).items()
                  if not name.startswith("__")})

from bench import gunicorn_worker  # noqa: E402 - its shared memory is created here, in the arbiter

worker_class = "bench.gunicorn_worker.BalancedThreadWorker"


def pre_fork(server, worker):
    # A shared-memory slot for the worker's connection count.
    gunicorn_worker.slot_assign(worker, server.WORKERS.values())

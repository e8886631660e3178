"""The celery executor: chunks of generation inputs on Celery workers (core.nightly.outcomes).

    payload.py   the chunk's inputs and each input's outcome, as JSON
    chunks.py    the chunk rows' shared queries, on the database's clock (claim, load, counts)
    broker.py    the broker check, the task by name, broker errors, the no-worker ping
    pool.py      a worker process's generator threads (network only)
    worker.py    the task body: claim, generate, store, heartbeat, record outcomes
    dispatch.py  sends, re-sends, re-dispatch of stale chunks, abandonment, cancel
    executor.py  CeleryExecutor: submit into chunks, report outcomes, close
"""

from core.nightly.executors.celery.broker import BROKER_UNAVAILABLE, CHUNK_TASK, celery_backend_check
from core.nightly.executors.celery.chunks import celery_chunk_counts
from core.nightly.executors.celery.executor import CeleryExecutor

__all__ = ["BROKER_UNAVAILABLE", "CHUNK_TASK", "CeleryExecutor", "celery_backend_check", "celery_chunk_counts"]

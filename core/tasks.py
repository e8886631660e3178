"""Celery tasks: thin interfaces to the batch services (fortuna_api/celery.py autodiscovers them)."""

from celery import shared_task, signals

from core.nightly.executors.celery.broker import CHUNK_TASK
from core.nightly.executors.celery.worker import celery_chunk_generate, celery_worker_warm_up


@shared_task(name=CHUNK_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def celery_chunk_generate_task(*, chunk_id: int, stale_seconds: float, rpm: int | None = None, tpm: int | None = None,
                              max_attempts: int | None = None) -> None:
    celery_chunk_generate(chunk_id=chunk_id, stale_seconds=stale_seconds, rpm=rpm, tpm=tpm, max_attempts=max_attempts)


@signals.worker_ready.connect  # the threads and solo pools: the worker's own process
@signals.worker_process_init.connect  # the prefork pool: each child
def _worker_warm_up(**_) -> None:
    celery_worker_warm_up()

"""Celery tasks: thin interfaces to the batch and push services (fortuna_api/celery.py autodiscovers them)."""

from celery import shared_task, signals

from core.nightly.executors.celery.broker import CHUNK_TASK
from core.nightly.executors.celery.worker import celery_chunk_generate, celery_worker_warm_up
from core.ops.push_report import push_report_send
from core.push.celery_pages import PAGE_TASK
from core.push.sender import SEND_DUE_TASK, PushOff, push_page_send_for_run, push_send_due


@shared_task(name=CHUNK_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def celery_chunk_generate_task(*, chunk_id: int, stale_seconds: float, rpm: int | None = None, tpm: int | None = None,
                              max_attempts: int | None = None) -> None:
    celery_chunk_generate(chunk_id=chunk_id, stale_seconds=stale_seconds, rpm=rpm, tpm=tpm, max_attempts=max_attempts)


@signals.worker_ready.connect  # the threads and solo pools: the worker's own process
@signals.worker_process_init.connect  # the prefork pool: each child
def _worker_warm_up(**_) -> None:
    celery_worker_warm_up()


@shared_task(name=PAGE_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def push_page_send_task(*, run_id: int, user_ids: list[int]) -> None:
    push_page_send_for_run(run_id=run_id, user_ids=user_ids)


@shared_task(name=SEND_DUE_TASK, ignore_result=True)
def push_send_due_task() -> None:
    """The Celery beat entry (CELERY_BEAT_SCHEDULE): one sender run in the worker, threads backend."""
    try:
        result = push_send_due()
    except PushOff:
        return
    push_report_send(result=result)

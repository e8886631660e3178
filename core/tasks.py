"""Celery tasks: thin interfaces to the batch services (fortuna_api/celery.py autodiscovers them)."""

from celery import shared_task


@shared_task(name="fortuna.batch_chunk_generate", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def batch_chunk_generate_task(*, chunk_id: int, stale_seconds: float, rpm: int | None = None, tpm: int | None = None,
                              max_attempts: int | None = None) -> None:
    from core.batch.celery_backend import batch_chunk_generate

    batch_chunk_generate(chunk_id=chunk_id, stale_seconds=stale_seconds, rpm=rpm, tpm=tpm, max_attempts=max_attempts)

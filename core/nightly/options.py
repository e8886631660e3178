"""What a caller (the command, a Celery task, a test) asks of one night's batch."""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

from django.conf import settings

from core.nightly.plan import PAGE_SIZE

BACKEND_THREADS = "threads"
BACKEND_CELERY = "celery"
BACKENDS = (BACKEND_THREADS, BACKEND_CELERY)
CHUNK_SIZE = 200  # inputs per Celery chunk: a few minutes of one worker's in-flight calls
MAX_CHUNK_SIZE = 10_000
INVALID_CHUNK_SIZE = f"--chunk-size must be between 1 and {MAX_CHUNK_SIZE}, got {{value}}."


class CeleryBackendUnavailable(Exception):
    """The celery backend cannot run (no broker, or no Redis for the shared limiter): nothing was written."""


@dataclass
class NightlyOptions:
    base_date: dt.date | None = None  # None: today in Korea, with the missed-night catch-up
    workers: int = 5
    user_id: int | None = None
    force: bool = False
    dry_run: bool = False  # plan only: no provider call, no write, no NightlyRun
    rpm: int | None = None  # None: settings.OPENAI_RPM (0 = no limit)
    tpm: int | None = None  # None: settings.OPENAI_TPM (0 = no limit)
    max_attempts: int | None = None  # None: settings.FORTUNE_MAX_ATTEMPTS
    max_cost: Decimal | None = None  # None: settings.FORTUNE_MAX_COST_PER_RUN (0 = no budget)
    max_runtime_minutes: float = 90.0
    retry_cooldown: float = 30.0  # seconds before the end-of-run round for transient failures
    grace_seconds: float = 2.0  # in-flight calls' time to finish once stopped (Railway's gap is 3 s)
    page_size: int = PAGE_SIZE
    provider_name: str | None = None
    batch_ahead: bool | None = None  # submit base+2 to the OpenAI Batch API; None: settings.FORTUNE_BATCH_AHEAD
    cancel_wait_seconds: float | None = None  # None: settings.FORTUNE_BATCH_CANCEL_WAIT_SECONDS
    # SIGTERM/SIGINT become a stop request when the service runs on the main thread. A Celery worker
    # owns its signals: its task passes False and its own StopToken (e.g. on revoke).
    handle_signals: bool = True
    progress_stream: TextIO | None = None
    progress_is_tty: bool = False
    progress_interval: float = 10.0
    # Where a target's generations are made: this process's threads, or Celery workers (issue 9).
    backend: str = "threads"  # BACKENDS
    chunk_size: int = CHUNK_SIZE  # inputs per Celery chunk (backend "celery")

    @property
    def ahead(self) -> bool:
        """Day-ahead Batch API submission is on (the flag, else the setting)."""
        return settings.FORTUNE_BATCH_AHEAD if self.batch_ahead is None else self.batch_ahead

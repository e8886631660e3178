"""What a caller (the command, a Celery task, a test) asks of one night's batch."""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import TextIO

from django.conf import settings

from core.batch.plan import PAGE_SIZE


@dataclass
class BatchOptions:
    base_date: dt.date | None = None  # None: today in Korea, with the missed-night catch-up
    workers: int = 5
    user_id: int | None = None
    force: bool = False
    dry_run: bool = False  # plan only: no provider call, no write, no BatchRun
    rpm: int | None = None  # None: settings.OPENAI_RPM (0 = no limit)
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

    @property
    def ahead(self) -> bool:
        """Day-ahead Batch API submission is on (the flag, else the setting)."""
        return settings.FORTUNE_BATCH_AHEAD if self.batch_ahead is None else self.batch_ahead

"""The dispatch bookkeeping that is Celery's alone: sends that failed are retried, chunks no worker
claimed are sent again with backoff, running chunks whose heartbeat went stale are re-dispatched,
a chunk every worker dies on is abandoned after MAX_CHUNK_ATTEMPTS, and open chunks are cancelled.

A send that fails is retried (core.resilience) and otherwise left for the next poll, never raised.
A chunk nobody claimed within FORTUNE_CELERY_CLAIM_TIMEOUT of its send is sent again (its message
was lost), backing off for chunks that merely wait behind busy workers. Completion is never a chord
(Redis chords lose callbacks): the chunk rows say what is done."""

import logging
import time
from collections.abc import Callable

from django.db.models import F
from django.db.models.functions import Now

from core.models import CeleryChunk, NightlyRun
from core.nightly.executors.celery.broker import broker_error, chunk_task
from core.nightly.executors.celery.chunks import db_ago, seconds_since
from core.nightly.lifecycle import HEARTBEAT_SECONDS
from core.resilience import db_retried, send_with_retries

logger = logging.getLogger("fortuna.nightly")

CHUNK_REDISPATCHED = "chunk {index} re-dispatched: its worker's heartbeat is {age:.0f} s old"
CHUNK_ABANDONED = "chunk {index} abandoned after {attempts} workers took it and went silent"
CHUNK_RESENT = "chunk {index} sent again: no worker claimed it {age:.0f} s after it was sent (its message was lost?)"
CHUNK_SEND_FAILED = "chunk {index} could not be sent to the broker ({error}); it is sent again at the next poll"
MAX_RESEND_BACKOFF = 5  # a chunk still unclaimed is sent again after the claim timeout × 2^(sends − 1), up to 2^this
MAX_CHUNK_ATTEMPTS = 5


class ChunkDispatcher:
    def __init__(self, *, run: NightlyRun, task_kwargs: dict, claim_timeout: float, stale_seconds: float,
                 note: Callable[[str], None]) -> None:
        self.run = run
        self.task_kwargs = task_kwargs
        self.claim_timeout = claim_timeout
        self.stale_seconds = stale_seconds
        self.note = note
        self.unsent: dict[int, int] = {}  # chunk id -> index: sends that failed, tried again at each poll

    def dispatch(self, chunk_id: int, index: int) -> bool:
        """Send the chunk's task. A broker that fails past the retries leaves it in self.unsent (tried
        again at each poll, as a broker down for longer would make every send wait): never raised."""
        # heartbeat_at of a queued chunk: when it was last sent (the claim timeout counts from there).
        CeleryChunk.objects.filter(pk=chunk_id).update(heartbeat_at=Now())
        if self.unsent:
            self.unsent.setdefault(chunk_id, index)  # the broker failed moments ago: behind the older ones
            return False
        return self._send(chunk_id, index)

    def _send(self, chunk_id: int, index: int) -> bool:
        task = chunk_task()
        try:
            # kombu's own retry off (it waits seconds before giving up): core.resilience retries.
            send_with_retries(lambda: task.apply_async(kwargs={"chunk_id": chunk_id, **self.task_kwargs},
                                                       retry=True, retry_policy={"max_retries": 0}),
                              retryable=broker_error)
        except Exception as exc:
            if not broker_error(exc):
                raise
            if chunk_id not in self.unsent:
                logger.warning("nightly run: %s", CHUNK_SEND_FAILED.format(index=index, error=exc))
            self.unsent.setdefault(chunk_id, index)
            return False
        self.unsent.pop(chunk_id, None)
        CeleryChunk.objects.filter(pk=chunk_id).update(dispatches=F("dispatches") + 1)
        return True

    @db_retried("tending the run's chunks")
    def tend(self) -> None:
        """Failed sends again, stale chunks re-dispatched (or abandoned), unclaimed ones sent again."""
        self._send_unsent()
        self._redispatch_stale()
        self._resend_unclaimed()

    def _send_unsent(self) -> None:
        """The sends that failed, oldest first, while the broker takes them."""
        for chunk_id, index in list(self.unsent.items()):
            if not CeleryChunk.objects.filter(pk=chunk_id, state=CeleryChunk.State.QUEUED).update(heartbeat_at=Now()):
                self.unsent.pop(chunk_id)  # cancelled meanwhile
                continue
            if not self._send(chunk_id, index):
                return

    def _redispatch_stale(self) -> None:
        stale = list(CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.RUNNING,
                                                heartbeat_at__lt=db_ago(self.stale_seconds))
                     .annotate(age=seconds_since("heartbeat_at"))
                     .values_list("pk", "index", "heartbeat_at", "attempts", "age"))
        for chunk_id, index, heartbeat_at, attempts, age in stale:
            if attempts >= MAX_CHUNK_ATTEMPTS:
                # A chunk that kills or crashes every worker that takes it: give up on it, not on the
                # night (finished_at: its inputs not done are reported stopped).
                CeleryChunk.objects.filter(pk=chunk_id, state=CeleryChunk.State.RUNNING).update(
                    state=CeleryChunk.State.CANCELLED, finished_at=Now())
                self.note(CHUNK_ABANDONED.format(index=index, attempts=attempts))
                logger.error("nightly run: %s", CHUNK_ABANDONED.format(index=index, attempts=attempts))
                continue
            requeued = CeleryChunk.objects.filter(pk=chunk_id, state=CeleryChunk.State.RUNNING,
                                                  heartbeat_at=heartbeat_at).update(state=CeleryChunk.State.QUEUED)
            if requeued:
                logger.warning("nightly run: %s", CHUNK_REDISPATCHED.format(index=index, age=age.total_seconds()))
                self.dispatch(chunk_id, index)

    def _resend_unclaimed(self) -> None:
        """Queued chunks no worker claimed within the claim timeout of their send: sent again, the next
        time after twice as long (a chunk waiting behind busy workers is not sent over and over)."""
        overdue = (CeleryChunk.objects.filter(run=self.run, state=CeleryChunk.State.QUEUED,
                                              heartbeat_at__lt=db_ago(self.claim_timeout))
                   .exclude(pk__in=list(self.unsent)).annotate(age=seconds_since("heartbeat_at"))
                   .values_list("pk", "index", "dispatches", "age"))
        for chunk_id, index, dispatches, age in overdue:
            wait = self.claim_timeout * 2 ** min(max(dispatches - 1, 0), MAX_RESEND_BACKOFF)
            if age.total_seconds() < wait:
                continue
            logger.warning("nightly run: %s", CHUNK_RESENT.format(index=index, age=age.total_seconds()))
            self.dispatch(chunk_id, index)

    def cancel_open(self) -> None:
        """Queued chunks are never started (finished now); running ones stop at their next heartbeat,
        storing what they generated, and their worker marks them finished."""
        chunks = CeleryChunk.objects.filter(run=self.run)
        chunks.filter(state=CeleryChunk.State.QUEUED).update(state=CeleryChunk.State.CANCELLED, finished_at=Now())
        chunks.filter(state=CeleryChunk.State.RUNNING).update(state=CeleryChunk.State.CANCELLED)
        self.unsent.clear()

    def wait_cancelled(self, seconds: float) -> None:
        """Up to `seconds` for the workers of cancelled chunks to finish them (a silent one is not waited for)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and CeleryChunk.objects.filter(
                run=self.run, state=CeleryChunk.State.CANCELLED, finished_at__isnull=True,
                heartbeat_at__gt=db_ago(HEARTBEAT_SECONDS * 2)).exists():
            time.sleep(0.2)

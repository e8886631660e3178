"""The celery executor: inputs go to Celery workers in chunks (CeleryChunk rows, one task each), and
what became of each input comes back from the chunk rows. The engine (core.nightly.scheduler) does
everything else — dedupe, reuse, late users, the retry round, failure accounting, the run's counters
— exactly as for threads; a retried input is simply submitted again, into a new chunk."""

import logging
import time

from django.conf import settings
from django.db import connection

from core.fortunes.inputs import GenerationInput
from core.models import CeleryChunk, NightlyRun
from core.nightly.executors.celery.broker import workers_answer
from core.nightly.executors.celery.chunks import STALE_SECONDS, db_now_plus
from core.nightly.executors.celery.dispatch import ChunkDispatcher
from core.nightly.executors.celery.payload import input_encode, outcome_decode, row_hash, stopped_outcome
from core.nightly.guards import StopGuards
from core.nightly.options import INVALID_CHUNK_SIZE, MAX_CHUNK_SIZE, NightlyOptions
from core.nightly.outcomes import Outcome
from core.resilience import db_retried

logger = logging.getLogger("fortuna.nightly")

POLL_SECONDS = 0.5  # the chunk rows are read this often (and the last one's end seen as soon)
PARTIAL_AFTER_SECONDS = 1.0  # a part-filled chunk goes out once the engine has waited this long with no submit
CANCEL_GRACE_SECONDS = 10.0  # at close, how long running cancelled chunks get to store what they made
NO_WORKER_NOTE = "no celery worker answered a ping at the start: chunks wait in the queue until one starts"
NEEDS_AUTOCOMMIT = "the celery executor needs autocommit: workers cannot see uncommitted chunks"


def chunk_size_check(value: int) -> int:
    if not 1 <= value <= MAX_CHUNK_SIZE:
        raise ValueError(INVALID_CHUNK_SIZE.format(value=value))
    return value


class CeleryExecutor:
    inline = False
    stores = True  # the workers store the generations and the results of the users given to submit()

    def __init__(self, *, run: NightlyRun, options: NightlyOptions, guards: StopGuards,
                 stale_seconds: float = STALE_SECONDS, poll_seconds: float = POLL_SECONDS) -> None:
        if connection.in_atomic_block:
            raise RuntimeError(NEEDS_AUTOCOMMIT)
        self.run = run
        self.guards = guards
        self.grace_seconds = min(CANCEL_GRACE_SECONDS, options.grace_seconds)
        self.chunk_size = chunk_size_check(options.chunk_size)
        self.poll_seconds = poll_seconds
        # On the database's clock, which the workers compare it with.
        self.deadline_at = db_now_plus(run=run, seconds=guards.deadline - time.monotonic())
        self.dispatcher = ChunkDispatcher(
            run=run, claim_timeout=float(settings.FORTUNE_CELERY_CLAIM_TIMEOUT), stale_seconds=stale_seconds,
            note=self.note, task_kwargs={"stale_seconds": stale_seconds, "rpm": options.rpm, "tpm": options.tpm,
                                         "max_attempts": options.max_attempts})
        self.buffer: list[list] = []
        self.buffer_users = 0
        self.chunks = 0
        self.pending: dict[int, set[str]] = {}  # chunk id -> hashes of its inputs not reported yet
        self.seen: dict[int, int] = {}  # chunk id -> outcomes it had when last read
        self.last_poll = 0.0
        self.last_submit = time.monotonic()
        self.cancelled = False
        self.dropped: list[str] = []  # inputs still buffered when the run stopped: reported stopped
        if not workers_answer():
            self.note(NO_WORKER_NOTE)

    def note(self, text: str) -> None:
        # The engine's RunRecorder holds this same row and saves its notes with the next heartbeat.
        self.run.notes = f"{self.run.notes}\n{text}".strip()

    def submit(self, digest: str, inp: GenerationInput, user_ids: list[int]) -> None:
        self.buffer.append(input_encode(inp, digest, list(user_ids)))
        self.buffer_users += len(user_ids)
        self.last_submit = time.monotonic()
        if len(self.buffer) >= self.chunk_size:
            self._send_buffer()

    def _send_buffer(self) -> None:
        if not self.buffer or self.cancelled:
            return
        chunk = db_retried("writing a chunk")(CeleryChunk.objects.create)(
            run=self.run, index=self.chunks, for_date=self.run.target_date, payload={"inputs": self.buffer},
            inputs=len(self.buffer), users=self.buffer_users, deadline_at=self.deadline_at)
        self.pending[chunk.pk] = {row_hash(row) for row in self.buffer}
        self.chunks += 1
        self.buffer, self.buffer_users = [], 0
        self.dispatcher.dispatch(chunk.pk, chunk.index)

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        """Outcomes not reported before, read from the chunk rows at most every poll_seconds. Waiting
        (timeout > 0), a part-filled chunk goes out when nothing else can answer or no input came for
        PARTIAL_AFTER_SECONDS; a stopped run's open chunks are cancelled at once. `gather` is not
        needed: a poll returns every outcome the chunk rows hold, already in a batch."""
        end = time.monotonic() + timeout
        while True:
            if self.guards.stopped and not self.cancelled:
                self._cancel()
            if self.dropped:
                items, self.dropped = [(digest, stopped_outcome()) for digest in self.dropped], []
                return items
            now = time.monotonic()
            if timeout > 0 and (not self.pending or now - self.last_submit >= PARTIAL_AFTER_SECONDS):
                self._send_buffer()
            if now - self.last_poll >= self.poll_seconds:
                items = self._poll()
                if items or timeout <= 0:
                    return items
            elif timeout <= 0:
                return []
            now = time.monotonic()
            if now >= end:
                return []
            time.sleep(max(0.0, min(end, self.last_poll + self.poll_seconds) - now))

    def _poll(self) -> list[tuple[str, Outcome]]:
        self.last_poll = time.monotonic()
        if not self.cancelled:
            self.dispatcher.tend()
        if not self.pending:
            return []
        return db_retried("reading the chunks' outcomes")(self._read)()

    def _read(self) -> list[tuple[str, Outcome]]:
        rows = list(CeleryChunk.objects.filter(pk__in=list(self.pending)).values_list(
            "pk", "finished_at", "stored_inputs", "failed_inputs"))
        changed = [pk for pk, finished_at, stored, failed in rows
                   if finished_at is not None or stored + failed > self.seen.get(pk, 0)]
        outcomes = dict(CeleryChunk.objects.filter(pk__in=changed).values_list("pk", "outcomes")) if changed else {}
        items: list[tuple[str, Outcome]] = []
        for pk, finished_at, stored, failed in rows:
            if pk not in outcomes:
                continue
            self.seen[pk] = stored + failed
            hashes = self.pending[pk]
            for digest, entry in outcomes[pk].items():
                if digest in hashes:
                    hashes.discard(digest)
                    items.append((digest, outcome_decode(entry)))
            if finished_at is not None:
                # Its worker is done with it (or it was cancelled before one took it, or abandoned):
                # what has no outcome was not done.
                items.extend((digest, stopped_outcome()) for digest in hashes)
                del self.pending[pk]
                self.seen.pop(pk, None)
        return items

    def _cancel(self) -> None:
        self.cancelled = True
        self.dropped.extend(row_hash(row) for row in self.buffer)  # never sent
        self.buffer, self.buffer_users = [], 0
        db_retried("cancelling the run's chunks")(self.dispatcher.cancel_open)()

    def close(self) -> None:
        """No more chunks: the open ones are cancelled, and running ones get a bounded grace to store."""
        try:
            if not self.cancelled:
                self._cancel()
            self.dispatcher.wait_cancelled(self.grace_seconds)
        except Exception:  # noqa: BLE001 - closing after a crash (the database gone): the run's error is raised
            logger.warning("nightly run: could not cancel the run's open chunks", exc_info=True)

"""The CeleryChunk rows' queries that both sides share, on the database's clock.

Every time compared across processes (heartbeats, claims, stale cut-offs, the chunks' deadline) is
the database's (Now() in the queries), never a process's: a worker whose clock is off by minutes
still heartbeats "now"."""

import datetime as dt

from django.db.models import Count, DurationField, ExpressionWrapper, F, Q
from django.db.models.functions import Now

from core.models import CeleryChunk, NightlyRun
from core.resilience import db_retried

STALE_SECONDS = 60.0  # a running chunk silent this long is re-dispatched (its worker died)
OPEN_STATES = (CeleryChunk.State.QUEUED, CeleryChunk.State.RUNNING)


def seconds_since(field: str) -> ExpressionWrapper:
    """Seconds (a timedelta) from a datetime column to the database's now."""
    return ExpressionWrapper(Now() - F(field), output_field=DurationField())


def db_ago(seconds: float):
    """The database's now, less `seconds`: a cut-off on the same clock as every heartbeat."""
    return Now() - dt.timedelta(seconds=seconds)


def db_now_plus(*, run: NightlyRun, seconds: float) -> dt.datetime:
    """The database's now plus seconds (the chunks' deadline, which workers compare with Now())."""
    now = NightlyRun.objects.filter(pk=run.pk).annotate(db_now=Now()).values_list("db_now", flat=True).get()
    return now + dt.timedelta(seconds=max(0.0, seconds))


@db_retried("claiming a chunk")
def celery_chunk_claim(*, chunk_id: int, worker: str, stale_seconds: float) -> bool:
    """Take the chunk if it is queued, or running with a stale heartbeat (its worker died)."""
    return bool(CeleryChunk.objects.filter(
        Q(state=CeleryChunk.State.QUEUED)
        | Q(state=CeleryChunk.State.RUNNING, heartbeat_at__lt=db_ago(stale_seconds)),
        pk=chunk_id,
    ).update(state=CeleryChunk.State.RUNNING, worker=worker, heartbeat_at=Now(), attempts=F("attempts") + 1))


@db_retried("loading a claimed chunk")
def celery_chunk_load(*, chunk_id: int) -> CeleryChunk:
    """The chunk with its run, and `left`: the time to its deadline by the database's clock (None
    without one). Retried like every step, so a restart right after the claim costs a pause, not the
    chunk (a failed task would leave it running until the stale cut-off)."""
    return CeleryChunk.objects.select_related("run").annotate(
        left=ExpressionWrapper(F("deadline_at") - Now(), output_field=DurationField())).get(pk=chunk_id)


def celery_chunk_counts(*, run: NightlyRun) -> dict[str, int]:
    """state -> number of the run's chunks (for progress displays and tests)."""
    rows = CeleryChunk.objects.filter(run=run).values("state").annotate(n=Count("pk"))
    return {row["state"]: row["n"] for row in rows}

"""A nightly run as people read it: the one view model of a NightlyRun.

The command's summary line, the webhooks (core.nightly.summary, core.nightly.notify), the ops pages and
/ops/status.json (core.ops) all read a RunSummary built here, so a figure (the rate, the ETA, what is
missing, the cost per pricing path) is worked out once. It lives with the selectors, below both the
batch engine and the ops interface, because both read it and neither may import the other's view.
"""

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from django.utils import timezone

from core.models import NightlyRun

# A live run saves its counters every few seconds (its heartbeat); this long without one means its
# process probably died (the next run for that date marks it interrupted).
STALE_AFTER = dt.timedelta(seconds=60)
STALE_HEARTBEAT = "no heartbeat for {seconds:.0f} s: its process may have died (the next run marks it interrupted)"
RERUN_COMMAND = "python manage.py generate_daily_fortunes --date {base_date}"
RERUN_USER_COMMAND = "python manage.py generate_daily_fortunes --date {base_date} --user-id {user_id}"


def format_duration(seconds: float | None) -> str:
    """H:MM:SS, or "?" when unknown."""
    if seconds is None:
        return "?"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def rerun_command(*, target_date: dt.date, user_id: int | None = None) -> str:
    """The command that fills the gaps of target_date (the batch takes the base date, one day before)."""
    base_date = target_date - dt.timedelta(days=1)
    if user_id is not None:
        return RERUN_USER_COMMAND.format(base_date=base_date.isoformat(), user_id=user_id)
    return RERUN_COMMAND.format(base_date=base_date.isoformat())


def _reason_of(item) -> str:
    if isinstance(item, dict):
        return str(item.get("reason") or item.get("error") or "unknown")
    return str(item)


def failure_reason_counts(sample) -> list[tuple[str, int]]:
    """(reason, users) from a failure sample, most common first. The sample is a list of
    {"reason", "count"} entries (one per failed input, as the batch writes it), of plain reason
    strings, or a {reason: count} mapping; an entry without a count counts once."""
    counts: Counter[str] = Counter()
    if isinstance(sample, dict):
        for reason, count in sample.items():
            counts[str(reason)] += int(count) if isinstance(count, int) else 1
        return counts.most_common()
    for item in sample or []:
        if isinstance(item, dict) and isinstance(item.get("count"), int):
            counts[_reason_of(item)] += item["count"]
        else:
            counts[_reason_of(item)] += 1
    return counts.most_common()


def cost_paths_text(*, cost_by_path: dict) -> str:
    """A NightlyRun.cost_by_path in words: per path its requests and cost, and the saving against
    all-standard; "" when the night was all standard (nothing to compare)."""
    paths = cost_by_path or {}
    if not any((paths.get(path) or {}).get("requests") for path in ("batch_api", "flex")):
        return ""
    parts = [f"{label} {paths[path]['requests']} req ~${paths[path]['cost']}"
             for path, label in (("batch_api", "batch API"), ("flex", "flex"), ("standard", "standard"))
             if path in paths]
    return (", ".join(parts) + f"; saving ~${paths.get('saving', 0)} against all-standard "
            f"~${paths.get('standard_equivalent', 0)}")


@dataclass(frozen=True, slots=True)
class FailureReason:
    reason: str
    users: int


@dataclass(frozen=True)
class RunSummary:
    pk: int | None
    base_date: dt.date | None
    target_date: dt.date | None
    catch_up: bool
    status: str
    eligible: int
    already_present: int
    generated: int  # users whose fortune the run stored
    failed: int
    generations: int
    llm_requests: int
    tokens_in: int
    tokens_out: int
    estimated_cost: Decimal
    seconds: float  # from its start to its end, or to its last heartbeat while it runs
    provider: str
    model: str
    workers: int
    stop_reason: str
    finished_at: dt.datetime | None
    reasons: list[tuple[str, int]] = field(default_factory=list)
    cost_paths: dict = field(default_factory=dict)  # NightlyRun.cost_by_path
    forced: bool = False
    user_id_filter: int | None = None
    hostname: str = ""
    pid: int | None = None
    started_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    in_flight: int | None = None  # at the last heartbeat; None: the run did not record it
    notes: str = ""
    stale: str = ""  # empty, or why this "running" row looks dead
    # What the run's Celery chunks and Batch API batches say at a glance (filled by the ops selectors).
    related: tuple[str, ...] = ()

    @classmethod
    def from_run(cls, run: NightlyRun, *, now: dt.datetime | None = None) -> "RunSummary":
        now = now or timezone.now()
        end = run.finished_at or run.heartbeat_at or now
        seconds = max((end - run.started_at).total_seconds(), 0.0) if run.started_at else 0.0
        running = run.status == NightlyRun.Status.RUNNING
        silence = now - run.heartbeat_at if run.heartbeat_at else dt.timedelta(0)
        return cls(
            pk=run.pk, base_date=run.base_date, target_date=run.target_date, catch_up=bool(run.catch_up),
            status=str(run.status), eligible=run.eligible, already_present=run.already_present,
            generated=run.generated, failed=run.failed, generations=run.generations, llm_requests=run.llm_requests,
            tokens_in=run.tokens_in, tokens_out=run.tokens_out, estimated_cost=Decimal(run.estimated_cost or 0),
            seconds=seconds, provider=run.provider or "", model=run.model or "", workers=run.workers,
            stop_reason=run.stop_reason or "", finished_at=run.finished_at,
            reasons=failure_reason_counts(run.failure_sample), cost_paths=dict(run.cost_by_path or {}),
            forced=run.forced, user_id_filter=run.user_id_filter, hostname=run.hostname or "", pid=run.pid,
            started_at=run.started_at, heartbeat_at=run.heartbeat_at, in_flight=run.in_flight, notes=run.notes or "",
            stale=STALE_HEARTBEAT.format(seconds=silence.total_seconds()) if running and silence > STALE_AFTER else "",
        )

    @classmethod
    def for_night(cls, *, base_date: dt.date, target_date: dt.date, status: str, reason: str) -> "RunSummary":
        """A target the night never ran (it crashed or was stopped first): no NightlyRun to read."""
        return cls(
            pk=None, base_date=base_date, target_date=target_date, catch_up=False, status=status, eligible=0,
            already_present=0, generated=0, failed=0, generations=0, llm_requests=0, tokens_in=0, tokens_out=0,
            estimated_cost=Decimal(0), seconds=0.0, provider="", model="", workers=0, stop_reason=reason[:255],
            finished_at=timezone.now(),
        )

    # --- derived figures (the JSON and the pages use these names) -------------------------------

    @property
    def id(self) -> int | None:
        return self.pk

    @property
    def done(self) -> int:
        return self.generated

    @property
    def running(self) -> bool:
        return self.status == NightlyRun.Status.RUNNING

    @property
    def succeeded(self) -> bool:
        return self.status == NightlyRun.Status.SUCCEEDED

    @property
    def total(self) -> int:
        """Users this run set out to make a fortune for."""
        return self.eligible if self.forced else max(self.eligible - self.already_present, 0)

    @property
    def processed(self) -> int:
        return self.generated + self.failed

    @property
    def percent(self) -> float:
        return min(100.0, 100.0 * self.processed / self.total) if self.total else 100.0

    @property
    def rate(self) -> float:
        """Users processed per second, over the time the counters cover."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        remaining = max(self.total - self.processed, 0)
        if not self.running:
            return None
        if remaining == 0:
            return 0.0
        return remaining / self.rate if self.rate > 0 else None

    @property
    def eta_text(self) -> str:
        return format_duration(self.eta_seconds)

    @property
    def duration_seconds(self) -> float:
        return self.seconds

    @property
    def duration(self) -> str:
        return format_duration(self.seconds)

    duration_text = duration

    @property
    def workers_text(self) -> str:
        where = f" on host {self.hostname}" if self.hostname else ""
        pid = f" (pid {self.pid})" if self.pid else ""
        return f"{self.workers} thread{'s' if self.workers != 1 else ''}{where}{pid}"

    @property
    def failures(self) -> list[FailureReason]:
        return [FailureReason(reason=reason, users=users) for reason, users in self.reasons]

    @property
    def failures_sampled(self) -> int:
        """Failed users the failure sample accounts for (it keeps the first inputs only)."""
        return sum(users for _, users in self.reasons)

    @property
    def missing(self) -> int:
        """Eligible users this run left without a fortune, by its own counters."""
        present = self.generated if self.forced else self.already_present + self.generated
        return max(self.eligible - present, 0)

    @property
    def command(self) -> str:
        return rerun_command(target_date=self.target_date, user_id=self.user_id_filter) if self.target_date else ""

    def cost_paths_text(self) -> str:
        return cost_paths_text(cost_by_path=self.cost_paths)

    def line(self) -> str:
        """The one-line human summary (stdout, logs, the command's error)."""
        text = (
            f"nightly run {self.target_date}{' (catch-up)' if self.catch_up else ''}: {self.status} — "
            f"{self.eligible} eligible, {self.already_present} already present, {self.generated} stored, "
            f"{self.failed} failed; {self.generations} generations, {self.llm_requests} LLM requests, "
            f"tokens {self.tokens_in}/{self.tokens_out}, ~${self.estimated_cost}; {self.duration}"
        )
        if paths := self.cost_paths_text():
            text += f" ({paths})"
        if self.reasons:
            text += "; failures: " + ", ".join(f"{reason} {count}" for reason, count in self.reasons)
        if self.stop_reason:
            text += f"; stopped: {self.stop_reason}"
        return text


def run_summary(*, run: NightlyRun, now: dt.datetime | None = None) -> RunSummary:
    return RunSummary.from_run(run, now=now)

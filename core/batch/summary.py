"""The one summary of a run (stdout, logs and the webhooks all read it) and of a dry run."""

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from django.utils import timezone

from core.batch.dates import BatchTarget


def format_duration(seconds: float | None) -> str:
    """H:MM:SS, or "?" when unknown."""
    if seconds is None:
        return "?"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


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
    """A BatchRun.cost_by_path in words: per path its requests and cost, and the saving against
    all-standard; "" when the night was all standard (nothing to compare)."""
    paths = cost_by_path or {}
    if not any((paths.get(path) or {}).get("requests") for path in ("batch_api", "flex")):
        return ""
    parts = [f"{label} {paths[path]['requests']} req ~${paths[path]['cost']}"
             for path, label in (("batch_api", "batch API"), ("flex", "flex"), ("standard", "standard"))
             if path in paths]
    return (", ".join(parts) + f"; saving ~${paths.get('saving', 0)} against all-standard "
            f"~${paths.get('standard_equivalent', 0)}")


@dataclass(frozen=True)
class RunSummary:
    pk: int | None
    base_date: dt.date | None
    target_date: dt.date | None
    catch_up: bool
    status: str
    eligible: int
    already_present: int
    generated: int
    failed: int
    generations: int
    llm_requests: int
    tokens_in: int
    tokens_out: int
    estimated_cost: Decimal
    seconds: float
    provider: str
    model: str
    workers: int
    stop_reason: str
    finished_at: dt.datetime | None
    reasons: list[tuple[str, int]] = field(default_factory=list)
    cost_paths: dict = field(default_factory=dict)  # BatchRun.cost_by_path

    @classmethod
    def from_run(cls, run) -> "RunSummary":
        end = run.finished_at or timezone.now()
        seconds = max((end - run.started_at).total_seconds(), 0.0) if run.started_at else 0.0
        return cls(
            pk=run.pk, base_date=run.base_date, target_date=run.target_date, catch_up=bool(run.catch_up),
            status=str(run.status), eligible=run.eligible, already_present=run.already_present,
            generated=run.generated, failed=run.failed, generations=run.generations, llm_requests=run.llm_requests,
            tokens_in=run.tokens_in, tokens_out=run.tokens_out, estimated_cost=Decimal(run.estimated_cost or 0),
            seconds=seconds, provider=run.provider or "", model=run.model or "", workers=run.workers,
            stop_reason=run.stop_reason or "", finished_at=run.finished_at,
            reasons=failure_reason_counts(run.failure_sample), cost_paths=dict(run.cost_by_path or {}),
        )

    @classmethod
    def for_night(cls, *, base_date: dt.date, target_date: dt.date, status: str, reason: str) -> "RunSummary":
        """A target the night never ran (it crashed or was stopped first): no BatchRun to read."""
        return cls(
            pk=None, base_date=base_date, target_date=target_date, catch_up=False, status=status, eligible=0,
            already_present=0, generated=0, failed=0, generations=0, llm_requests=0, tokens_in=0, tokens_out=0,
            estimated_cost=Decimal(0), seconds=0.0, provider="", model="", workers=0, stop_reason=reason[:255],
            finished_at=timezone.now(),
        )

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def duration(self) -> str:
        return format_duration(self.seconds)

    def cost_paths_text(self) -> str:
        return cost_paths_text(cost_by_path=self.cost_paths)

    def line(self) -> str:
        """The one-line human summary (stdout, logs, the command's error)."""
        text = (
            f"fortune batch {self.target_date}{' (catch-up)' if self.catch_up else ''}: {self.status} — "
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


def batch_run_summary(*, run) -> str:
    return RunSummary.from_run(run).line()


@dataclass
class DryRunReport:
    target: BatchTarget
    eligible: int = 0
    already_present: int = 0
    to_generate: int = 0  # users
    generations: int = 0  # distinct new generations = LLM requests without retries
    reused: int = 0  # users whose input already has a stored generation
    unplannable: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    estimated_cost: Decimal = Decimal(0)
    sample_user_ids: list[int] = field(default_factory=list)
    provider: str = ""

    def line(self) -> str:
        target = self.target
        return (
            f"fortune batch dry run {target.target_date}{' (catch-up)' if target.catch_up else ''}: "
            f"{self.eligible} eligible, {self.already_present} already present, {self.to_generate} to generate "
            f"({self.reused} reuse a stored generation), {self.generations} distinct generations = LLM requests, "
            f"~{self.tokens_in}/{self.tokens_out} tokens in/out, ~${self.estimated_cost} with {self.provider}; "
            f"sample user ids {self.sample_user_ids}"
        )

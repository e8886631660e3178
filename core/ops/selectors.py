"""Reads for the operators' view (/ops/): one data source for the HTML pages and /ops/status.json.

Every figure comes from NightlyRun counters (a few hundred rows) or from indexed aggregates on
FortuneResult — the per-date count uses fortune_for_date_idx, the on-demand and fallback counts the
partial indexes fortune_on_demand_date_idx and fortune_fallback_date_idx — never from a scan of
FortuneResult. Coverage is exact and live (the
database now, not what a run saw when it started); history is what each run recorded.

A run, wherever it shows, is core.services.runs.RunSummary (what the command's summary line and the
webhooks read too); this module adds only what the pages show beside it.
"""

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, Exists, OuterRef, Q, Sum
from django.utils import timezone

from core.fortunes.pricing import PATH_TIERS, PriceUnknown, Tier, cost_estimate
from core.models import CeleryChunk, FortuneGeneration, FortuneResult, NightlyRun, OpenAIBatch, User, UserQuerySet
from core.push.selectors import PushDay, PushHealth, push_days, push_health, push_recent_runs
from core.services.health import batch_health, cache_status
from core.services.runs import RunSummary, rerun_command

HISTORY_DAYS_CHOICES = (30, 90)
HISTORY_DAYS_MAX = 365
FAILED_USERS_SHOWN = 50
RELATED_ROWS_SHOWN = 100

RUN_NOT_FOUND = "There is no nightly run with id {run_id}."
DATE_INVALID = "date must be a calendar date written YYYY-MM-DD, got {value!r}."
DAYS_INVALID = f"days must be a whole number from 1 to {HISTORY_DAYS_MAX}, got {{value!r}}."


class OpsInputError(ValueError):
    """A query parameter an operator typed that the ops view cannot use; str() says why."""


class OpsRunNotFound(LookupError):
    pass


def ops_parse_date(*, value: str) -> dt.date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise OpsInputError(DATE_INVALID.format(value=value)) from None


def ops_parse_days(*, value: str) -> int:
    try:
        days = int(value)
    except (TypeError, ValueError):
        raise OpsInputError(DAYS_INVALID.format(value=value)) from None
    if not 1 <= days <= HISTORY_DAYS_MAX:
        raise OpsInputError(DAYS_INVALID.format(value=value))
    return days


# --- runs ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RelatedRows:
    """A table of the rows another model keeps for a run (its Celery chunks, its date's Batch API batches)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    total: int


CHUNKS_TITLE = "Celery chunks"
CHUNK_COLUMNS = ("index", "state", "inputs", "users", "stored_inputs", "failed_inputs", "attempts", "dispatches",
                 "worker", "heartbeat_at", "finished_at")
# The Batch API's batches belong to a target date, not to a run (a batch is submitted a night ahead).
BATCH_API_TITLE = "OpenAI Batch API batches for {target_date}"
BATCH_API_COLUMNS = ("batch_id", "state", "remote_status", "request_count", "completed_lines", "failed_lines",
                     "stored_users", "estimated_cost", "last_error")


def _rows_table(*, title: str, queryset, model, columns: tuple[str, ...]) -> RelatedRows | None:
    rows = [["" if value is None else str(value) for value in values]
            for values in queryset.values_list(*columns)[:RELATED_ROWS_SHOWN]]
    if not rows:  # a path this run did not take (a threads run has no chunks)
        return None
    return RelatedRows(
        title=title, columns=[str(model._meta.get_field(name).verbose_name) for name in columns], rows=rows,
        total=queryset.count() if len(rows) == RELATED_ROWS_SHOWN else len(rows),
    )


def _related_rows(run: NightlyRun) -> list[RelatedRows]:
    tables = [
        _rows_table(title=CHUNKS_TITLE, queryset=CeleryChunk.objects.filter(run=run).order_by("index", "pk"),
                    model=CeleryChunk, columns=CHUNK_COLUMNS),
        _rows_table(title=BATCH_API_TITLE.format(target_date=run.target_date),
                    queryset=OpenAIBatch.objects.filter(target_date=run.target_date).order_by("pk"),
                    model=OpenAIBatch, columns=BATCH_API_COLUMNS),
    ]
    return [table for table in tables if table is not None]


def _states_text(*, title: str, states: list[tuple[str, int]], hosts: list[str]) -> str:
    parts = [", ".join(f"{n} {state}" for state, n in sorted(states, key=lambda i: (-i[1], i[0])))]
    if hosts:
        parts.append("hosts " + ", ".join(hosts))
    return f"{title}: {'; '.join(parts)}"


def _related_texts(run: NightlyRun) -> tuple[str, ...]:
    """What the run's chunks and its date's Batch API batches say at a glance: states counted, workers seen."""
    texts = []
    chunks = CeleryChunk.objects.filter(run=run).order_by()
    if states := list(chunks.values_list("state").annotate(n=Count("*"))):
        workers = sorted(chunks.exclude(worker="").values_list("worker", flat=True).distinct()[:20])
        texts.append(_states_text(title=CHUNKS_TITLE, states=states, hosts=workers))
    batches = OpenAIBatch.objects.filter(target_date=run.target_date).order_by()
    if states := list(batches.values_list("state").annotate(n=Count("*"))):
        texts.append(_states_text(title=BATCH_API_TITLE.format(target_date=run.target_date), states=states,
                                  hosts=[]))
    return tuple(texts)


def _run_card(run: NightlyRun, *, now: dt.datetime) -> RunSummary:
    return dataclasses.replace(RunSummary.from_run(run, now=now), related=_related_texts(run))


@dataclass(slots=True)
class OpsNow:
    now: dt.datetime
    running: list[RunSummary]
    last_finished: RunSummary | None
    health_ok: bool
    health_problems: list[str]
    cache: str = "ok"  # core.services.health.cache_status(): "ok", "down" or "not configured"


def ops_now(*, now: dt.datetime | None = None) -> OpsNow:
    now = now or timezone.now()
    running = [_run_card(run, now=now) for run in NightlyRun.objects.filter(status=NightlyRun.Status.RUNNING)]
    last = NightlyRun.objects.exclude(status=NightlyRun.Status.RUNNING).order_by("-started_at").first()
    health = batch_health(now=now)
    return OpsNow(
        now=now, running=running, last_finished=_run_card(last, now=now) if last is not None else None,
        health_ok=health.ok, health_problems=list(health.problems), cache=cache_status(),
    )


# --- coverage --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Coverage:
    for_date: dt.date
    label: str  # "today", "tomorrow" or ""
    eligible: int
    with_fortune: int  # eligible users who have a fortune for for_date
    on_demand: int  # of all fortunes for for_date, those the web made with the model
    fallback: int  # those the web made from the saju rules because the model could not answer
    gap: int
    command: str

    @property
    def ok(self) -> bool:
        return self.gap == 0

    @property
    def percent(self) -> float:
        return 100.0 * self.with_fortune / self.eligible if self.eligible else 100.0


def ops_coverage_many(*, dates: list[dt.date], today: dt.date | None = None) -> list[Coverage]:
    """Coverage for several dates in four queries: one pass over users (eligible, and ineligible
    users who still have a fortune, each an index probe), and three indexed counts on FortuneResult."""
    today = today or timezone.localdate()
    dates = list(dict.fromkeys(dates))
    # User.objects.eligible()'s rule as a Q, so one pass over users counts both sides.
    eligible_q = UserQuerySet.ELIGIBLE
    aggregates = {"eligible": Count("pk", filter=eligible_q)}
    for n, day in enumerate(dates):
        has_fortune = Exists(FortuneResult.objects.filter(user=OuterRef("pk"), for_date=day))
        aggregates[f"ineligible_{n}"] = Count("pk", filter=~eligible_q & Q(has_fortune))
    counts = User.objects.aggregate(**aggregates)
    totals = dict(
        FortuneResult.objects.filter(for_date__in=dates).values_list("for_date").annotate(n=Count("*")).order_by()
    )
    on_demand = _count_by_date(source=FortuneResult.Source.ON_DEMAND, for_date__in=dates)
    fallback = _count_by_date(source=FortuneResult.Source.FALLBACK, for_date__in=dates)
    labels = {today: "today", today + dt.timedelta(days=1): "tomorrow"}
    result = []
    for n, day in enumerate(dates):
        with_fortune = totals.get(day, 0) - counts[f"ineligible_{n}"]
        result.append(Coverage(
            for_date=day, label=labels.get(day, ""), eligible=counts["eligible"], with_fortune=with_fortune,
            on_demand=on_demand.get(day, 0), fallback=fallback.get(day, 0),
            gap=max(counts["eligible"] - with_fortune, 0),
            command=rerun_command(target_date=day),
        ))
    return result


def _count_by_date(*, source: str, **date_filter) -> dict[dt.date, int]:
    """Fortunes of one source per date: an index-only scan of that source's partial index."""
    rows = FortuneResult.objects.filter(source=source, **date_filter).values_list("for_date").annotate(n=Count("*"))
    return dict(rows.order_by())


def ops_coverage(*, for_date: dt.date, today: dt.date | None = None) -> Coverage:
    return ops_coverage_many(dates=[for_date], today=today)[0]


# --- history ---------------------------------------------------------------------------------

@dataclass(slots=True)
class Night:
    target_date: dt.date
    runs: int = 0
    status: str = ""  # the last run's
    last_run_id: int | None = None
    eligible: int = 0  # the last full run's
    stored: int = 0
    failed: int = 0
    missing: int = 0  # left without a fortune at the end of the last full run, by its counters
    duration_seconds: float = 0.0
    llm_requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    estimated_cost: Decimal = Decimal(0)
    cost_by_path: dict[str, Decimal] = field(default_factory=dict)  # per pricing path (COST_PATHS)
    on_demand: int = 0
    fallback: int = 0  # saju-rule fortunes served because the model could not answer

    @property
    def cost_lines(self) -> list[tuple[str, Decimal]]:
        """(label, cost) of each pricing path this night paid for."""
        return [(COST_PATH_LABELS[path], self.cost_by_path[path]) for path in COST_PATHS if self.cost_by_path.get(path)]

    @property
    def on_demand_share(self) -> float:
        return 100.0 * self.on_demand / self.eligible if self.eligible else 0.0


@dataclass(slots=True)
class OpsHistory:
    days: int
    start: dt.date
    end: dt.date
    nights: list[Night]  # oldest first, one per target date in [start, end], empty nights included
    paths: list[str]  # the COST_PATHS these nights paid for, in COST_PATHS' order

    @property
    def has_runs(self) -> bool:
        return any(n.runs for n in self.nights)

    @property
    def path_labels(self) -> list[str]:
        return [COST_PATH_LABELS[path] for path in self.paths]

    @property
    def total_cost(self) -> Decimal:
        """The runs' cost and the on-demand generations'."""
        return sum((sum(n.cost_by_path.values(), Decimal(0)) for n in self.nights), Decimal(0))


# The pricing paths of the cost chart: the run's own (NightlyRun.cost_by_path, core.fortunes.pricing.PATH_TIERS)
# and the web's on-demand generations, billed at the standard tier.
ON_DEMAND_PATH = "on_demand"
COST_PATHS = (*PATH_TIERS, ON_DEMAND_PATH)
COST_PATH_LABELS = {"batch_api": "batch API", "flex": "flex", "standard": "standard", ON_DEMAND_PATH: "on demand"}


def _run_cost_by_path(run: NightlyRun) -> dict[str, Decimal]:
    """What the run paid per pricing path; a run from before the paths were recorded paid standard."""
    recorded = {path: Decimal((run.cost_by_path or {}).get(path, {}).get("cost") or 0) for path in PATH_TIERS}
    if not any(recorded.values()) and run.estimated_cost:
        return {"standard": Decimal(run.estimated_cost)}
    return recorded


def _on_demand_cost_by_date(*, start: dt.date, end: dt.date) -> dict[dt.date, Decimal]:
    """The model's cost of the generations the web made on demand, per date: generations an on-demand
    fortune points at and no batch fortune does (a generation the batch reused was the batch's cost).
    Starts from the on-demand partial index; a model without a price counts nothing (its night's run
    would have failed on it already)."""
    made = FortuneResult.objects.filter(source=FortuneResult.Source.ON_DEMAND, for_date__gte=start,
                                        for_date__lte=end).values("generation_id")
    batch_use = FortuneResult.objects.filter(generation=OuterRef("pk"), source=FortuneResult.Source.BATCH)
    rows = (FortuneGeneration.objects.filter(pk__in=made).exclude(Exists(batch_use)).values("for_date", "model")
            .annotate(tokens_in=Sum("tokens_in"), tokens_out=Sum("tokens_out")).order_by())
    costs: dict[dt.date, Decimal] = {}
    for row in rows:
        try:
            cost = cost_estimate(model=row["model"], tier=Tier.STANDARD, tokens_in=row["tokens_in"] or 0,
                                 tokens_out=row["tokens_out"] or 0)
        except PriceUnknown:
            continue
        costs[row["for_date"]] = costs.get(row["for_date"], Decimal(0)) + cost
    return costs


def ops_history(*, days: int, today: dt.date | None = None) -> OpsHistory:
    """The last `days` nights up to tomorrow (the night being prepared), from NightlyRun counters
    plus indexed counts of on-demand and fallback fortunes per date."""
    if not 1 <= days <= HISTORY_DAYS_MAX:
        raise OpsInputError(DAYS_INVALID.format(value=days))
    today = today or timezone.localdate()
    end = today + dt.timedelta(days=1)
    start = end - dt.timedelta(days=days - 1)
    nights = {start + dt.timedelta(days=n): Night(target_date=start + dt.timedelta(days=n)) for n in range(days)}
    last_full: dict[dt.date, NightlyRun] = {}
    for run in NightlyRun.objects.filter(target_date__gte=start, target_date__lte=end).order_by("started_at", "pk"):
        night = nights[run.target_date]
        night.runs += 1
        night.status, night.last_run_id = run.status, run.pk
        night.stored += run.generated
        night.failed += run.failed
        night.llm_requests += run.llm_requests
        night.tokens_in += run.tokens_in
        night.tokens_out += run.tokens_out
        night.estimated_cost += run.estimated_cost
        for path, cost in _run_cost_by_path(run).items():
            if cost:  # a night's paths are those it paid for
                night.cost_by_path[path] = night.cost_by_path.get(path, Decimal(0)) + cost
        if run.duration is not None:
            night.duration_seconds += run.duration.total_seconds()
        if run.user_id_filter is None:
            last_full[run.target_date] = run
    for day, run in last_full.items():
        nights[day].eligible, nights[day].missing = run.eligible, RunSummary.from_run(run).missing
    window = {"for_date__gte": start, "for_date__lte": end}
    for day, n in _count_by_date(source=FortuneResult.Source.ON_DEMAND, **window).items():
        nights[day].on_demand = n
    for day, n in _count_by_date(source=FortuneResult.Source.FALLBACK, **window).items():
        nights[day].fallback = n
    for day, cost in _on_demand_cost_by_date(start=start, end=end).items():
        nights[day].cost_by_path[ON_DEMAND_PATH] = cost
    paid = [path for path in COST_PATHS if any(n.cost_by_path.get(path) for n in nights.values())]
    return OpsHistory(days=days, start=start, end=end, nights=list(nights.values()), paths=paid)


# --- one run ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FailedUser:
    user_id: int
    username: str  # empty when the user no longer exists
    reason: str
    error: str
    command: str


@dataclass(slots=True)
class OpsRunDetail:
    run: RunSummary
    failed_users: list[FailedUser]
    related: list[RelatedRows]
    coverage: Coverage


def ops_run_detail(*, run_id: int) -> OpsRunDetail:
    run = NightlyRun.objects.filter(pk=run_id).first()
    if run is None:
        raise OpsRunNotFound(RUN_NOT_FOUND.format(run_id=run_id))
    view = RunSummary.from_run(run)
    sampled: list[tuple[int, str, str]] = []
    for entry in run.failure_sample or []:
        for user_id in entry.get("user_ids", []):
            sampled.append((int(user_id), entry.get("reason", "unknown"), entry.get("error", "")))
    sampled = sampled[:FAILED_USERS_SHOWN]
    names = dict(User.objects.filter(pk__in=[s[0] for s in sampled]).values_list("pk", "username"))
    failed_users = [
        FailedUser(user_id=uid, username=names.get(uid, ""), reason=reason, error=error,
                   command=rerun_command(target_date=run.target_date, user_id=uid))
        for uid, reason, error in sampled
    ]
    return OpsRunDetail(
        run=view, failed_users=failed_users, related=_related_rows(run),
        coverage=ops_coverage(for_date=run.target_date),
    )


def ops_recent_runs(*, limit: int = 20) -> list[RunSummary]:
    now = timezone.now()
    return [RunSummary.from_run(run, now=now) for run in NightlyRun.objects.order_by("-started_at", "-pk")[:limit]]


# --- status (the JSON endpoint and the pages' live refresh) ----------------------------------

# --- the morning push ------------------------------------------------------------------------

PUSH_DAYS_SHOWN = 7


@dataclass(slots=True)
class OpsPush:
    """The push's dead-man's switch, and per day (today first): due, sent, failed by reason, unconfirmed,
    devices deactivated, still pending — every figure counted from the delivery and device rows."""

    health: PushHealth
    days: list[PushDay]
    runs: list

    @property
    def configured(self) -> bool:
        return self.health.configured

    @property
    def today(self) -> PushDay:
        return self.days[0]


def ops_push(*, now: dt.datetime | None = None, days: int = PUSH_DAYS_SHOWN) -> OpsPush:
    return OpsPush(health=push_health(now=now), days=push_days(days=days, now=now), runs=push_recent_runs(limit=5))


@dataclass(slots=True)
class OpsStatus:
    ok: bool
    generated_at: dt.datetime
    now: OpsNow
    coverage: list[Coverage]
    push: OpsPush | None = None


def ops_status(*, extra_date: dt.date | None = None) -> OpsStatus:
    """Now, plus coverage for today and tomorrow (and extra_date), plus the morning push; ok when both
    dead-man's switches are happy and tomorrow has no gap."""
    now = ops_now()
    today = timezone.localdate(now.now)
    dates = [today, today + dt.timedelta(days=1)] + ([extra_date] if extra_date else [])
    coverage = ops_coverage_many(dates=dates, today=today)
    push = ops_push(now=now.now)
    return OpsStatus(ok=now.health_ok and coverage[1].ok and push.health.ok, generated_at=now.now, now=now,
                     coverage=coverage, push=push)

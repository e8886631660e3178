"""Reads for the operators' view (/ops/): one data source for the HTML pages and /ops/status.json.

Every figure comes from BatchRun counters (a few hundred rows) or from indexed aggregates on
FortuneResult — the per-date count uses fortune_for_date_idx, the on-demand and fallback counts the
partial indexes fortune_on_demand_date_idx and fortune_fallback_date_idx — never from a scan of
FortuneResult. Coverage is exact and live (the
database now, not what a run saw when it started); history is what each run recorded.
"""

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal

from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from core.batch.summary import cost_paths_text
from core.models import BatchRun, FortuneResult, OpenAIBatch, User
from core.services.health import batch_health, cache_status

# A live run saves its counters every few seconds (its heartbeat); this long without one means its
# process probably died (the next run for that date marks it interrupted).
STALE_AFTER = dt.timedelta(seconds=60)
HISTORY_DAYS_CHOICES = (30, 90)
HISTORY_DAYS_MAX = 365
FAILED_USERS_SHOWN = 50
RELATED_ROWS_SHOWN = 100

RERUN_COMMAND = "python manage.py generate_daily_fortunes --date {base_date}"
RERUN_USER_COMMAND = "python manage.py generate_daily_fortunes --date {base_date} --user-id {user_id}"
RUN_NOT_FOUND = "There is no batch run with id {run_id}."
DATE_INVALID = "date must be a calendar date written YYYY-MM-DD, got {value!r}."
DAYS_INVALID = f"days must be a whole number from 1 to {HISTORY_DAYS_MAX}, got {{value!r}}."
STALE_HEARTBEAT = "no heartbeat for {seconds:.0f} s: its process may have died (the next run marks it interrupted)"


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


def rerun_command(*, target_date: dt.date, user_id: int | None = None) -> str:
    """The command that fills the gaps of target_date (the batch takes the base date, one day before)."""
    base_date = target_date - dt.timedelta(days=1)
    if user_id is not None:
        return RERUN_USER_COMMAND.format(base_date=base_date.isoformat(), user_id=user_id)
    return RERUN_COMMAND.format(base_date=base_date.isoformat())


def duration_text(*, seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


# --- runs ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FailureReason:
    reason: str
    users: int


@dataclass(frozen=True, slots=True)
class RelatedRows:
    """Rows of another model that points at a run (Celery chunks, Batch API batches, ...)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    total: int


@dataclass(slots=True)
class RunView:
    id: int
    target_date: dt.date
    base_date: dt.date
    status: str
    catch_up: bool
    forced: bool
    user_id_filter: int | None
    provider: str
    model: str
    eligible: int
    already_present: int
    total: int  # users this run set out to make a fortune for
    done: int  # users whose fortune it stored
    failed: int
    percent: float
    rate: float  # users processed per second, from the counters' timestamps
    eta_seconds: float | None
    in_flight: int | None  # None: the run does not record it
    generations: int
    llm_requests: int
    tokens_in: int
    tokens_out: int
    estimated_cost: Decimal
    workers: int
    hostname: str
    pid: int | None
    started_at: dt.datetime
    heartbeat_at: dt.datetime
    finished_at: dt.datetime | None
    duration_seconds: float
    stale: str  # empty, or why this "running" row looks dead
    stop_reason: str
    notes: str
    failures: list[FailureReason]
    failures_sampled: int  # failed users the failure sample accounts for (it keeps the first inputs only)
    missing: int  # eligible users this run left without a fortune, by its own counters
    command: str
    # Celery chunks, Batch API batches: filled for running runs only (see _related_summaries).
    related: list["RelatedSummary"] = field(default_factory=list)
    cost_paths: str = ""  # BatchRun.cost_by_path in words ("" when the night was all standard)

    @property
    def eta_text(self) -> str:
        return duration_text(seconds=self.eta_seconds) if self.eta_seconds is not None else "?"

    @property
    def duration_text(self) -> str:
        return duration_text(seconds=self.duration_seconds)

    @property
    def workers_text(self) -> str:
        where = f" on host {self.hostname}" if self.hostname else ""
        pid = f" (pid {self.pid})" if self.pid else ""
        return f"{self.workers} thread{'s' if self.workers != 1 else ''}{where}{pid}"


def _run_view(run: BatchRun, *, now: dt.datetime) -> RunView:
    total = run.eligible if run.forced else max(run.eligible - run.already_present, 0)
    processed = run.generated + run.failed
    end = run.finished_at or run.heartbeat_at
    elapsed = max((end - run.started_at).total_seconds(), 0.0)
    rate = processed / elapsed if elapsed > 0 else 0.0
    remaining = max(total - processed, 0)
    running = run.status == BatchRun.Status.RUNNING
    if not running or remaining == 0:
        eta = 0.0 if running else None
    else:
        eta = remaining / rate if rate > 0 else None
    reasons: Counter[str] = Counter()
    for entry in run.failure_sample or []:
        reasons[entry.get("reason", "unknown")] += int(entry.get("count", 1))
    silence = now - run.heartbeat_at
    stale = STALE_HEARTBEAT.format(seconds=silence.total_seconds()) if running and silence > STALE_AFTER else ""
    present = run.generated if run.forced else run.already_present + run.generated
    return RunView(
        id=run.pk, target_date=run.target_date, base_date=run.base_date, status=run.status, catch_up=run.catch_up,
        forced=run.forced, user_id_filter=run.user_id_filter, provider=run.provider, model=run.model,
        eligible=run.eligible, already_present=run.already_present, total=total, done=run.generated,
        failed=run.failed, percent=min(100.0, 100.0 * processed / total) if total else 100.0, rate=rate,
        eta_seconds=eta, in_flight=getattr(run, "in_flight", None), generations=run.generations,
        llm_requests=run.llm_requests, tokens_in=run.tokens_in, tokens_out=run.tokens_out,
        estimated_cost=run.estimated_cost, workers=run.workers, hostname=run.hostname, pid=run.pid,
        started_at=run.started_at, heartbeat_at=run.heartbeat_at, finished_at=run.finished_at,
        duration_seconds=elapsed, stale=stale, stop_reason=run.stop_reason, notes=run.notes,
        failures=[FailureReason(reason=r, users=n) for r, n in sorted(reasons.items(), key=lambda i: (-i[1], i[0]))],
        failures_sampled=sum(reasons.values()), missing=max(run.eligible - present, 0) if run.eligible else 0,
        command=rerun_command(target_date=run.target_date, user_id=run.user_id_filter),
        cost_paths=cost_paths_text(cost_by_path=run.cost_by_path),
    )


def _related_rows(run: BatchRun) -> list[RelatedRows]:
    """Rows of every model with a foreign key to BatchRun (the Celery and Batch API paths add such
    models): shown on the run's page as they are, so a new path needs no change here."""
    sections = []
    for relation in BatchRun._meta.related_objects:
        if relation.many_to_many:
            continue
        model = relation.related_model
        fk = relation.field
        fields = [f for f in model._meta.concrete_fields if f is not fk]
        queryset = model._default_manager.filter(**{fk.name: run}).order_by("pk")
        rows = [
            ["" if getattr(obj, f.attname) is None else str(getattr(obj, f.attname)) for f in fields]
            for obj in queryset[:RELATED_ROWS_SHOWN]
        ]
        if not rows:  # a path this run did not take (a threads run has no chunks)
            continue
        sections.append(RelatedRows(
            title=str(model._meta.verbose_name_plural), columns=[f.verbose_name for f in fields], rows=rows,
            total=queryset.count() if len(rows) == RELATED_ROWS_SHOWN else len(rows),
        ))
    batches = OpenAIBatch.objects.filter(target_date=run.target_date).order_by("pk")
    if batches.exists():
        fields = [OpenAIBatch._meta.get_field(name) for name in BATCH_API_COLUMNS]
        rows = [[str(getattr(obj, f.attname)) for f in fields] for obj in batches[:RELATED_ROWS_SHOWN]]
        sections.append(RelatedRows(
            title=BATCH_API_TITLE.format(target_date=run.target_date), columns=[f.verbose_name for f in fields],
            rows=rows, total=batches.count(),
        ))
    return sections


# The Batch API's batches belong to a target date, not to a run (a batch is submitted a night ahead).
BATCH_API_TITLE = "OpenAI Batch API batches for {target_date}"
BATCH_API_COLUMNS = ("batch_id", "state", "remote_status", "request_count", "completed_lines", "failed_lines",
                     "stored_users", "estimated_cost", "last_error")


@dataclass(frozen=True, slots=True)
class RelatedSummary:
    """What a running run's related rows say at a glance: states counted, worker hosts seen."""

    title: str
    states: list[tuple[str, int]]
    hosts: list[str]

    @property
    def text(self) -> str:
        parts = [", ".join(f"{n} {state}" for state, n in self.states)] if self.states else []
        if self.hosts:
            parts.append("hosts " + ", ".join(self.hosts))
        return f"{self.title}: {'; '.join(parts) or 'none yet'}"


STATE_FIELDS = ("status", "state")
HOST_FIELDS = ("hostname", "worker", "worker_hostname")


def _related_summaries(run: BatchRun) -> list[RelatedSummary]:
    summaries = []
    for relation in BatchRun._meta.related_objects:
        if relation.many_to_many:
            continue
        model, fk = relation.related_model, relation.field
        names = {f.name for f in model._meta.concrete_fields}
        rows = model._default_manager.filter(**{fk.name: run})
        state = next((n for n in STATE_FIELDS if n in names), None)
        host = next((n for n in HOST_FIELDS if n in names), None)
        states = (sorted(rows.order_by().values_list(state).annotate(n=Count("*")), key=lambda i: (-i[1], i[0]))
                  if state else [])
        hosts = (sorted(rows.order_by().exclude(**{host: ""}).values_list(host, flat=True).distinct()[:20])
                 if host else [])
        if not states and not hosts:  # a path this run does not take (a threads run has no chunks)
            continue
        summaries.append(RelatedSummary(title=str(model._meta.verbose_name_plural), states=states, hosts=hosts))
    states = sorted(OpenAIBatch.objects.filter(target_date=run.target_date).order_by().values_list("state")
                    .annotate(n=Count("*")), key=lambda i: (-i[1], i[0]))
    if states:
        summaries.append(RelatedSummary(title=BATCH_API_TITLE.format(target_date=run.target_date), states=states,
                                        hosts=[]))
    return summaries


@dataclass(slots=True)
class OpsNow:
    now: dt.datetime
    running: list[RunView]
    last_finished: RunView | None
    health_ok: bool
    health_problems: list[str]
    cache: str = "ok"  # core.services.health.cache_status(): "ok", "down" or "not configured"


def ops_now(*, now: dt.datetime | None = None) -> OpsNow:
    now = now or timezone.now()
    running = []
    for run in BatchRun.objects.filter(status=BatchRun.Status.RUNNING):
        view = _run_view(run, now=now)
        view.related = _related_summaries(run)
        running.append(view)
    last = BatchRun.objects.exclude(status=BatchRun.Status.RUNNING).order_by("-started_at").first()
    health = batch_health(now=now)
    last_view = None
    if last is not None:
        last_view = _run_view(last, now=now)
        last_view.related = _related_summaries(last)
    return OpsNow(
        now=now, running=running, last_finished=last_view,
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
    # batch_eligible_users' rule as a Q, so one pass over users counts both sides (tests compare the two).
    eligible_q = Q(is_active=True, birth_date_solar__isnull=False)
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
    cost_by_path: dict[str, Decimal] = field(default_factory=dict)
    on_demand: int = 0
    fallback: int = 0  # saju-rule fortunes served because the model could not answer

    @property
    def on_demand_share(self) -> float:
        return 100.0 * self.on_demand / self.eligible if self.eligible else 0.0


@dataclass(slots=True)
class OpsHistory:
    days: int
    start: dt.date
    end: dt.date
    nights: list[Night]  # oldest first, one per target date in [start, end], empty nights included
    paths: list[str]

    @property
    def total_cost(self) -> Decimal:
        return sum((n.estimated_cost for n in self.nights), Decimal(0))


def _path_of(run: BatchRun) -> str:
    # A run's generation path; the Batch API and Celery paths may record their own in a `path` field.
    return getattr(run, "path", "") or run.provider or "unknown"


def ops_history(*, days: int, today: dt.date | None = None) -> OpsHistory:
    """The last `days` nights up to tomorrow (the night being prepared), from BatchRun counters
    plus indexed counts of on-demand and fallback fortunes per date."""
    if not 1 <= days <= HISTORY_DAYS_MAX:
        raise OpsInputError(DAYS_INVALID.format(value=days))
    today = today or timezone.localdate()
    end = today + dt.timedelta(days=1)
    start = end - dt.timedelta(days=days - 1)
    nights = {start + dt.timedelta(days=n): Night(target_date=start + dt.timedelta(days=n)) for n in range(days)}
    last_full: dict[dt.date, BatchRun] = {}
    paths: set[str] = set()
    for run in BatchRun.objects.filter(target_date__gte=start, target_date__lte=end).order_by("started_at", "pk"):
        night = nights[run.target_date]
        night.runs += 1
        night.status, night.last_run_id = run.status, run.pk
        night.stored += run.generated
        night.failed += run.failed
        night.llm_requests += run.llm_requests
        night.tokens_in += run.tokens_in
        night.tokens_out += run.tokens_out
        night.estimated_cost += run.estimated_cost
        path = _path_of(run)
        paths.add(path)
        night.cost_by_path[path] = night.cost_by_path.get(path, Decimal(0)) + run.estimated_cost
        if run.duration is not None:
            night.duration_seconds += run.duration.total_seconds()
        if run.user_id_filter is None:
            last_full[run.target_date] = run
    for day, run in last_full.items():
        view = _run_view(run, now=timezone.now())
        nights[day].eligible, nights[day].missing = run.eligible, view.missing
    window = {"for_date__gte": start, "for_date__lte": end}
    for day, n in _count_by_date(source=FortuneResult.Source.ON_DEMAND, **window).items():
        nights[day].on_demand = n
    for day, n in _count_by_date(source=FortuneResult.Source.FALLBACK, **window).items():
        nights[day].fallback = n
    return OpsHistory(days=days, start=start, end=end, nights=list(nights.values()), paths=sorted(paths))


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
    run: RunView
    failed_users: list[FailedUser]
    related: list[RelatedRows]
    coverage: Coverage


def ops_run_detail(*, run_id: int) -> OpsRunDetail:
    run = BatchRun.objects.filter(pk=run_id).first()
    if run is None:
        raise OpsRunNotFound(RUN_NOT_FOUND.format(run_id=run_id))
    view = _run_view(run, now=timezone.now())
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


def ops_recent_runs(*, limit: int = 20) -> list[RunView]:
    now = timezone.now()
    return [_run_view(run, now=now) for run in BatchRun.objects.order_by("-started_at", "-pk")[:limit]]


# --- status (the JSON endpoint and the pages' live refresh) ----------------------------------

@dataclass(slots=True)
class OpsStatus:
    ok: bool
    generated_at: dt.datetime
    now: OpsNow
    coverage: list[Coverage]


def ops_status(*, extra_date: dt.date | None = None) -> OpsStatus:
    """Now, plus coverage for today and tomorrow (and extra_date); ok when the dead-man's switch is
    happy and tomorrow has no gap."""
    now = ops_now()
    today = timezone.localdate(now.now)
    dates = [today, today + dt.timedelta(days=1)] + ([extra_date] if extra_date else [])
    coverage = ops_coverage_many(dates=dates, today=today)
    return OpsStatus(ok=now.health_ok and coverage[1].ok, generated_at=now.now, now=now, coverage=coverage)

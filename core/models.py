import datetime as dt

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower
from django.utils import timezone

from core import natal, saju

EARLIEST_BIRTH_DATE = dt.date(1900, 1, 1)
BIRTH_DATE_BEFORE_1900 = "Birth dates before 1900-01-01 are not supported."
BIRTH_DATE_IN_FUTURE = "The birth date cannot be in the future (today in Korea is {today})."


def validate_birth_date(value: dt.date) -> None:
    if value < EARLIEST_BIRTH_DATE:
        raise ValidationError(BIRTH_DATE_BEFORE_1900, code="before_1900")
    today = timezone.localdate()
    if value > today:
        raise ValidationError(BIRTH_DATE_IN_FUTURE.format(today=today.isoformat()), code="future")


def chart_options() -> saju.ChartOptions:
    """This deployment's chart conventions, read per call so that a settings change applies at once."""
    return saju.ChartOptions(zi_convention=settings.SAJU_ZI_CONVENTION, local_mean_time=settings.SAJU_LOCAL_MEAN_TIME)


class UserQuerySet(models.QuerySet):
    # Who gets a nightly fortune: the planner and the ops coverage both count these users. A Q as well,
    # so a selector can count both sides of it in one aggregate.
    ELIGIBLE = Q(is_active=True, birth_date_solar__isnull=False)

    def eligible(self) -> "UserQuerySet":
        return self.filter(self.ELIGIBLE)


class FortunaUserManager(UserManager.from_queryset(UserQuerySet)):
    pass


class User(AbstractUser):
    class Gender(models.TextChoices):
        MALE = "M", "남성"
        FEMALE = "F", "여성"
        UNSPECIFIED = "", "미지정"

    email = models.EmailField("email address", blank=True, db_index=True)
    birth_date_solar = models.DateField(null=True, blank=True, validators=[validate_birth_date])
    # Lunar input exactly as the user gave it; birth_date_solar is derived from it on save.
    birth_lunar_year = models.PositiveSmallIntegerField(null=True, blank=True)
    birth_lunar_month = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(12)]
    )
    birth_lunar_day = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(30)]
    )
    birth_lunar_is_leap_month = models.BooleanField(default=False)
    birth_time = models.TimeField(null=True, blank=True, help_text="Korean civil time; empty = unknown.")
    gender = models.CharField(max_length=1, choices=Gender.choices, blank=True, default="")

    # Natal pillars: derived from the birth data (core.natal) on every save(). natal_birth_date/time and
    # natal_version record what they were computed from, so stale rows can be found in SQL.
    saju_year = models.CharField(max_length=2, blank=True, default="", editable=False)
    saju_month = models.CharField(max_length=2, blank=True, default="", editable=False)
    saju_day = models.CharField(max_length=2, blank=True, default="", editable=False)
    saju_hour = models.CharField(max_length=2, blank=True, default="", editable=False)
    natal_birth_date = models.DateField(null=True, blank=True, editable=False)
    natal_birth_time = models.TimeField(null=True, blank=True, editable=False)
    natal_version = models.PositiveIntegerField(null=True, blank=True, editable=False)

    # The morning push (core/push): on or off, and when, in Korean time (Fortuna's day is the Korean day).
    notify_enabled = models.BooleanField(default=True)
    notify_at = models.TimeField(default=dt.time(8, 0), help_text="Korean time (KST) of the daily push.")

    objects = FortunaUserManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                Lower("email"),
                condition=~Q(email=""),
                name="user_email_unique_ci",
                violation_error_message="A user with this email address already exists.",
            ),
            models.CheckConstraint(
                condition=Q(gender__in=["M", "F", ""]),
                name="user_gender_known",
                violation_error_message="gender must be M, F or empty.",
            ),
            models.CheckConstraint(
                condition=Q(birth_date_solar__isnull=True) | Q(birth_date_solar__gte=EARLIEST_BIRTH_DATE),
                name="user_birth_date_from_1900",
                violation_error_message=BIRTH_DATE_BEFORE_1900,
            ),
        ]

    def clean(self) -> None:
        super().clean()
        user_apply_lunar_birth_date(user=self)

    def save(self, *args, **kwargs) -> None:
        changed = user_sync_natal(user=self)
        update_fields = kwargs.get("update_fields")
        if update_fields is not None and changed:
            kwargs["update_fields"] = set(update_fields) | set(changed)
        super().save(*args, **kwargs)

    @property
    def natal_pillars(self) -> dict[str, str | None]:
        return {
            "year": self.saju_year,
            "month": self.saju_month,
            "day": self.saju_day,
            "hour": self.saju_hour or None,
        }


# Keeping derived fields in step with their source is the model's own job (save() and clean() call
# these); services call the same two, so every write path derives the pillars one way.
def user_apply_lunar_birth_date(*, user: User) -> bool:
    """Derive birth_date_solar from a lunar birth date when one was given. Returns True if it changed."""
    try:
        return natal.lunar_birth_date_apply(birth=user)
    except natal.BirthDataInvalid as exc:
        raise ValidationError({exc.field: exc.message}) from None


def user_sync_natal(*, user: User) -> list[str]:
    """Bring the user's derived fields in step with its birth data; returns the names it changed."""
    try:
        return natal.pillars_sync(record=user, options=chart_options())
    except natal.BirthDataInvalid as exc:
        raise ValidationError({exc.field: exc.message}) from None


class FortuneGeneration(models.Model):
    """One generated fortune per distinct generation input; many users' results may share it."""

    input_hash = models.CharField(max_length=64, unique=True)
    for_date = models.DateField(db_index=True)
    content = models.JSONField()
    provider = models.CharField(max_length=32)
    model = models.CharField(max_length=64, blank=True, default="")
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.for_date} {self.input_hash[:12]} ({self.provider})"


class FortuneResult(models.Model):
    class Source(models.TextChoices):
        BATCH = "batch", "batch"
        ON_DEMAND = "on_demand", "on demand"
        # Made on demand from the saju rules (the local provider) because the model could not answer
        # within the request's budget; served all day like any other (core.services.fortunes).
        FALLBACK = "fallback", "fallback (saju rules)"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="fortunes")
    for_date = models.DateField()
    generation = models.ForeignKey(FortuneGeneration, on_delete=models.PROTECT, related_name="results")
    source = models.CharField(max_length=16, choices=Source.choices)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "for_date"], name="fortune_one_per_user_per_day")]
        indexes = [
            models.Index(fields=["for_date"], name="fortune_for_date_idx"),
            # The ops pages count on-demand fortunes per night; a partial index keeps that an index-only
            # range scan, and batch rows (nearly all of them) never touch it.
            models.Index(fields=["for_date"], condition=Q(source="on_demand"), name="fortune_on_demand_date_idx"),
            models.Index(fields=["for_date"], condition=Q(source="fallback"), name="fortune_fallback_date_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.for_date}"

    @property
    def content(self) -> dict:
        return self.generation.content

    @property
    def provider(self) -> str:
        return self.generation.provider

    @property
    def model(self) -> str:
        return self.generation.model


class ServedFortune(models.Model):
    """A stored fortune as GET /fortune/… serves it: a FortuneResult with its generation's time and
    content (as JSON text), read from the database view `core_served_fortune` (migration 0006).

    Read-only. The view does the join in the database, so the request's ORM query is one table's:
    building and compiling the join was a large part of what the ORM spent on that hot path
    (docs/BENCHMARKS.md, API). A migration that changes a column the view selects drops and creates
    the view again (PostgreSQL refuses to alter a column a view depends on).
    tests/core/test_served_fortune.py holds it equal to the same read through FortuneResult.
    """

    id = models.BigIntegerField(primary_key=True)  # the FortuneResult's
    user_id = models.BigIntegerField()
    for_date = models.DateField()
    generation_id = models.BigIntegerField()
    source = models.CharField(max_length=16, choices=FortuneResult.Source.choices)
    generated_at = models.DateTimeField()
    content_json = models.TextField()

    class Meta:
        managed = False
        db_table = "core_served_fortune"

    def __str__(self) -> str:
        return f"{self.user_id} {self.for_date}"


class NightlyRun(models.Model):
    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial"
        FAILED = "failed"
        INTERRUPTED = "interrupted"

    base_date = models.DateField()
    target_date = models.DateField(db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING, db_index=True)
    catch_up = models.BooleanField(default=False, help_text="Run that filled a missed night's gaps.")
    forced = models.BooleanField(default=False)
    user_id_filter = models.BigIntegerField(null=True, blank=True)
    eligible = models.PositiveIntegerField(default=0)
    already_present = models.PositiveIntegerField(default=0)
    generated = models.PositiveIntegerField(default=0, help_text="Users whose fortune this run stored.")
    generations = models.PositiveIntegerField(default=0, help_text="Distinct generations this run made.")
    failed = models.PositiveIntegerField(default=0)
    llm_requests = models.PositiveIntegerField(default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)
    estimated_cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    workers = models.PositiveSmallIntegerField(default=0)
    provider = models.CharField(max_length=32, blank=True, default="")
    model = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    in_flight = models.PositiveIntegerField(
        null=True, blank=True,
        help_text="Generations asked of the model and not answered yet, at the last heartbeat (empty: not recorded).")
    finished_at = models.DateTimeField(null=True, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    hostname = models.CharField(max_length=255, blank=True, default="")
    stop_reason = models.CharField(max_length=255, blank=True, default="")
    failure_sample = models.JSONField(default=list, blank=True)
    notes = models.TextField(blank=True, default="")
    # Per path ("batch_api", "flex", "standard"): {"requests", "tokens_in", "tokens_out", "cost"} (cost a
    # decimal string, USD), plus "standard_equivalent" and "saving": what all-standard would have cost.
    cost_by_path = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["target_date", "status"], name="batchrun_target_status_idx")]

    def __str__(self) -> str:
        return f"NightlyRun {self.pk} {self.target_date} {self.status}"

    @property
    def duration(self) -> dt.timedelta | None:
        return (self.finished_at - self.started_at) if self.finished_at else None


class OpenAIBatch(models.Model):
    """One OpenAI Batch API batch (one JSONL file, one model) of generations for one target date.

    The row is written before each remote step (state machine: planned → uploaded → submitted →
    collected | failed | discarded), so a process killed at any point is resumed from what is recorded
    and never creates a second batch for the same file (reconciled by listing batches with metadata_key).
    """

    class State(models.TextChoices):
        PLANNED = "planned"        # file written locally, not uploaded (or upload unconfirmed)
        UPLOADED = "uploaded"      # input file uploaded, batch not (confirmed) created
        SUBMITTED = "submitted"    # batch created; remote_status tells where it is
        COLLECTED = "collected"    # output and error files stored (completed, expired or cancelled)
        FAILED = "failed"          # the remote batch failed (invalid input file): its inputs go synchronous
        DISCARDED = "discarded"    # never submitted (resumed too late): its inputs go synchronous

    OPEN_STATES = (State.PLANNED, State.UPLOADED, State.SUBMITTED)

    target_date = models.DateField(db_index=True)
    model = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PLANNED, db_index=True)
    metadata_key = models.CharField(max_length=64, unique=True, help_text="Sent as batch metadata fortuna_key.")
    remote_status = models.CharField(max_length=16, blank=True, default="", help_text="The batch's OpenAI status.")
    request_count = models.PositiveIntegerField(default=0)
    file_bytes = models.PositiveBigIntegerField(default=0)
    file_sha256 = models.CharField(max_length=64, blank=True, default="")
    input_hashes = models.JSONField(default=list, blank=True, help_text="custom_id (input hash) of every line.")
    input_file_id = models.CharField(max_length=64, blank=True, default="")
    batch_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    output_file_id = models.CharField(max_length=64, blank=True, default="")
    error_file_id = models.CharField(max_length=64, blank=True, default="")
    completed_lines = models.PositiveIntegerField(default=0, help_text="Lines valid and stored (or already stored).")
    failed_lines = models.PositiveIntegerField(default=0, help_text="Lines left for the synchronous pass.")
    stored_users = models.PositiveIntegerField(default=0)
    tokens_in = models.PositiveBigIntegerField(default=0)
    tokens_out = models.PositiveBigIntegerField(default=0)
    estimated_cost = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    download_failures = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    submitted_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    collected_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["target_date", "state"], name="openaibatch_target_state_idx")]

    def __str__(self) -> str:
        return f"OpenAIBatch {self.pk} {self.target_date} {self.state} {self.batch_id or self.metadata_key}"


class CeleryChunk(models.Model):
    """A slice of one NightlyRun's new generations, dispatched to Celery workers (the celery backend).

    Completion lives here, not in the broker: the celery executor reads each input's outcome from
    here, and re-dispatches a chunk whose worker stopped heartbeating. Generating a chunk twice is
    harmless (stores are upserts by input hash; a re-run skips inputs already stored).
    """

    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"  # every input stored, or failed for good
        CANCELLED = "cancelled"  # the run stopped (deadline, signal, budget) before it finished

    run = models.ForeignKey(NightlyRun, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    for_date = models.DateField()
    # {"inputs": [[year, month, day, hour, gender, language, prompt_version, generator, nonce, hash,
    # [user ids]], ...]}: the generation inputs and who needs them, as planned.
    payload = models.JSONField()
    inputs = models.PositiveIntegerField(default=0)
    users = models.PositiveIntegerField(default=0)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    attempts = models.PositiveSmallIntegerField(default=0, help_text="Times a worker claimed it.")
    dispatches = models.PositiveSmallIntegerField(default=0, help_text="Times it was sent to the broker.")
    deadline_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=255, blank=True, default="", help_text="hostname:pid of its last worker")
    stored_inputs = models.PositiveIntegerField(default=0)
    failed_inputs = models.PositiveIntegerField(default=0)
    # What became of each input, by its full hash, as the worker stored or gave it up: {hash: {...}}
    # (core.nightly.executors.celery.payload). The executor reports them to the engine, which does
    # the failure accounting and the retry round; an input without one was not done.
    outcomes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="batchchunk_one_per_index")]
        indexes = [models.Index(fields=["run", "state"], name="batchchunk_run_state_idx")]

    def __str__(self) -> str:
        return f"CeleryChunk {self.run_id}/{self.index} {self.state}"


# --- push notifications (core/push) --------------------------------------------------------------


class PushDevice(models.Model):
    """An FCM registration token of one of a user's apps. One row per token: registering a token that
    another account holds moves the row. Deactivated (never deleted) when FCM says the token is dead, so
    the ops page can count them; deleting a row loses the token and nothing else."""

    class Platform(models.TextChoices):
        ANDROID = "android"
        IOS = "ios"
        WEB = "web"

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="push_devices")
    token = models.CharField(max_length=512, unique=True)
    platform = models.CharField(max_length=8, choices=Platform.choices)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    deactivated_reason = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["user"], condition=Q(active=True), name="pushdevice_active_user_idx"),
            models.Index(fields=["deactivated_at"], condition=Q(active=False), name="pushdevice_deactivated_idx"),
        ]

    def __str__(self) -> str:
        return f"PushDevice {self.pk} {self.platform} user {self.user_id}"


class PushRun(models.Model):
    """One run of the sender (send_fortune_notifications): what it found and did, for ops and the report."""

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        PARTIAL = "partial"  # some deliveries failed
        FAILED = "failed"  # stopped: FCM refused the credentials, or an error
        INTERRUPTED = "interrupted"  # a signal stopped it

    for_date = models.DateField(db_index=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    backend = models.CharField(max_length=16, default="threads")
    due = models.PositiveIntegerField(default=0, help_text="Users due with no delivery yet when the run began.")
    claimed = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    released = models.PositiveIntegerField(default=0, help_text="Claims given back unsent (the run stopped).")
    no_fortune = models.PositiveIntegerField(default=0, help_text="Due users skipped: no fortune for the day yet.")
    unconfirmed = models.PositiveIntegerField(default=0, help_text="Stale claims of a dead sender found by this run.")
    devices_deactivated = models.PositiveIntegerField(default=0)
    messages = models.PositiveIntegerField(default=0, help_text="FCM send requests that succeeded.")
    pages = models.PositiveIntegerField(default=0)
    pages_done = models.PositiveIntegerField(default=0)
    failures = models.JSONField(default=dict, blank=True, help_text="Failed deliveries by reason.")
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    pid = models.PositiveIntegerField(null=True, blank=True)
    hostname = models.CharField(max_length=255, blank=True, default="")
    stop_reason = models.CharField(max_length=500, blank=True, default="")
    report_sent = models.BooleanField(default=False, help_text="This run sent the day's morning summary.")

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            # One morning summary a day, whichever of two concurrent senders gets there first.
            models.UniqueConstraint(fields=["for_date"], condition=Q(report_sent=True),
                                    name="pushrun_one_report_per_day"),
        ]

    def __str__(self) -> str:
        return f"PushRun {self.pk} {self.for_date} {self.status}"


class PushDelivery(models.Model):
    """A user's push for one (Korean) day. Inserted (claimed) before anything is sent, unique per user
    and date: whoever inserts it is the only sender of that user's push that day, whatever crashes,
    reruns or concurrent senders. A claim never confirmed is `unconfirmed`: maybe sent, never resent."""

    class State(models.TextChoices):
        CLAIMED = "claimed"
        SENT = "sent"  # FCM accepted it for at least one device
        FAILED = "failed"  # no device accepted it; `reason` says why
        UNCONFIRMED = "unconfirmed"  # claimed by a sender that died before recording the outcome

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="push_deliveries")
    for_date = models.DateField()
    run = models.ForeignKey(PushRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="deliveries")
    state = models.CharField(max_length=16, choices=State.choices, default=State.CLAIMED)
    # Which page execution claimed it: a Celery page delivered twice (acks_late) claims nothing the second time.
    claim_key = models.CharField(max_length=32, blank=True, default="")
    reason = models.CharField(max_length=32, blank=True, default="")
    devices_sent = models.PositiveSmallIntegerField(default=0)
    devices_failed = models.PositiveSmallIntegerField(default=0)
    claimed_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "for_date"], name="pushdelivery_one_per_user_per_day")]
        indexes = [models.Index(fields=["for_date", "state"], name="pushdelivery_date_state_idx")]

    def __str__(self) -> str:
        return f"PushDelivery {self.user_id} {self.for_date} {self.state}"

"""Reads of the morning push: who is due, a day's figures (for /ops/, status.json and the report), the
dead-man's switch, and a user's devices.

"Today" is the Korean date (TIME_ZONE is Asia/Seoul), and notify_at is a Korean time of day.
Due = eligible for a fortune (User.ELIGIBLE), notifications on, notify_at come, an active device, and no
delivery row for the day. Every figure is an indexed count; none scans the users table beyond the
due query's own filter.
"""

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Count, Exists, OuterRef, QuerySet
from django.utils import timezone

from core.models import FortuneResult, PushDelivery, PushDevice, PushRun, User, UserQuerySet

PUSH_OVERDUE = ("{count} users due since before {cutoff} KST have had no push yet (is the sender, "
                "send_fortune_notifications, running?).")
PUSH_LAST_RUN_FAILED = "The last push run failed: {reason}"
PUSH_NOT_CONFIGURED = "Push notifications are off (FCM_CREDENTIALS is not set)."


def push_local_now(now: dt.datetime | None = None) -> dt.datetime:
    """Now in Korea (the date is the push's day, the time of day what notify_at is compared with)."""
    return timezone.localtime(now or timezone.now())


def _has_active_device() -> Exists:
    return Exists(PushDevice.objects.filter(user_id=OuterRef("pk"), active=True))


def _has_fortune(for_date: dt.date) -> Exists:
    return Exists(FortuneResult.objects.filter(user_id=OuterRef("pk"), for_date=for_date))


def push_due_users(*, for_date: dt.date, at: dt.time) -> QuerySet[User]:
    """Users whose push for `for_date` is due at Korean time `at` and not delivered (nor claimed)."""
    return (
        User.objects.filter(UserQuerySet.ELIGIBLE, notify_enabled=True, notify_at__lte=at)
        .filter(_has_active_device())
        .exclude(Exists(PushDelivery.objects.filter(user_id=OuterRef("pk"), for_date=for_date)))
    )


def push_due_page(*, for_date: dt.date, at: dt.time, after_id: int, limit: int) -> list[int]:
    """The next keyset page of due user ids (ascending, all above after_id)."""
    return list(
        push_due_users(for_date=for_date, at=at).filter(pk__gt=after_id).order_by("pk")
        .values_list("pk", flat=True)[:limit]
    )


@dataclass(slots=True)
class PushDay:
    """A day's push figures, from the delivery rows (what happened) and the due query (what is left)."""

    for_date: dt.date
    sent: int = 0
    failed: int = 0
    unconfirmed: int = 0  # claimed by a sender that died before recording the outcome: maybe sent, never resent
    in_flight: int = 0  # claimed, outcome not recorded yet (a sender at work, or one that just died)
    pending: int = 0  # due now, a fortune ready, nothing claimed: the next run sends them
    waiting_for_fortune: int = 0  # due now but no fortune for the day yet: skipped until one exists
    devices_deactivated: int = 0
    failures: list[tuple[str, int]] = field(default_factory=list)  # failed deliveries by reason

    @property
    def failure_rows(self) -> list[dict]:
        return [{"reason": reason, "users": n} for reason, n in self.failures]

    @property
    def due(self) -> int:
        """Every user whose push time came today with notifications on and an active device."""
        return self.sent + self.failed + self.unconfirmed + self.in_flight + self.pending + self.waiting_for_fortune


def push_day(*, for_date: dt.date, now: dt.datetime | None = None) -> PushDay:
    """The figures of `for_date`; pending and waiting count the due query at `now` when it is that day."""
    local = push_local_now(now)
    day = PushDay(for_date=for_date)
    by_state = dict(PushDelivery.objects.filter(for_date=for_date).order_by()
                    .values_list("state").annotate(n=Count("*")))
    day.sent = by_state.get(PushDelivery.State.SENT, 0)
    day.failed = by_state.get(PushDelivery.State.FAILED, 0)
    day.unconfirmed = by_state.get(PushDelivery.State.UNCONFIRMED, 0)
    day.in_flight = by_state.get(PushDelivery.State.CLAIMED, 0)
    reasons = (PushDelivery.objects.filter(for_date=for_date, state=PushDelivery.State.FAILED).order_by()
               .values_list("reason").annotate(n=Count("*")))
    day.failures = sorted(reasons, key=lambda item: (-item[1], item[0]))
    if for_date == local.date():
        due = push_due_users(for_date=for_date, at=local.time()).annotate(has_fortune=_has_fortune(for_date))
        counts = Counter(dict(due.order_by().values_list("has_fortune").annotate(n=Count("*"))))
        day.pending, day.waiting_for_fortune = counts.get(True, 0), counts.get(False, 0)
    start = dt.datetime.combine(for_date, dt.time(), tzinfo=local.tzinfo)
    day.devices_deactivated = PushDevice.objects.filter(
        active=False, deactivated_at__gte=start, deactivated_at__lt=start + dt.timedelta(days=1)).count()
    return day


def push_days(*, days: int, now: dt.datetime | None = None) -> list[PushDay]:
    """The last `days` days, today first."""
    today = push_local_now(now).date()
    return [push_day(for_date=today - dt.timedelta(days=n), now=now) for n in range(days)]


@dataclass(slots=True)
class PushHealth:
    configured: bool
    ok: bool
    problems: list[str] = field(default_factory=list)
    last_run: PushRun | None = None


def push_health(*, now: dt.datetime | None = None) -> PushHealth:
    """The push's dead-man's switch: users due for longer than PUSH_MAX_SILENCE_MINUTES with a fortune ready
    and no push (a morning whose sender never ran, or stopped), or a last run that failed."""
    if not settings.FCM_CREDENTIALS:
        return PushHealth(configured=False, ok=True, problems=[])
    local = push_local_now(now)
    problems = []
    last = PushRun.objects.exclude(status=PushRun.Status.RUNNING).order_by("-started_at").first()
    if last is not None and last.status == PushRun.Status.FAILED:
        problems.append(PUSH_LAST_RUN_FAILED.format(reason=last.stop_reason or "no reason recorded"))
    silence = dt.timedelta(minutes=settings.PUSH_MAX_SILENCE_MINUTES)
    cutoff = local - silence
    if cutoff.date() == local.date():  # just after midnight nobody can be overdue yet
        overdue = (push_due_users(for_date=local.date(), at=cutoff.time())
                   .filter(_has_fortune(local.date())).count())
        if overdue:
            problems.append(PUSH_OVERDUE.format(count=overdue, cutoff=cutoff.strftime("%H:%M")))
    return PushHealth(configured=True, ok=not problems, problems=problems, last_run=last)


def push_recent_runs(*, limit: int = 10) -> list[PushRun]:
    return list(PushRun.objects.order_by("-started_at", "-pk")[:limit])


def push_device_list(*, user: User) -> QuerySet[PushDevice]:
    """The user's devices, deactivated ones too (the app can see that FCM dropped its token and register anew)."""
    return PushDevice.objects.filter(user=user).order_by("pk")

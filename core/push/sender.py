"""The morning push: today's fortune to every due user, at most once a day each.

One run (push_send_due, called by send_fortune_notifications every few minutes):

1. expire stale claims: a delivery claimed over PUSH_CLAIM_STALE_MINUTES ago and never confirmed belongs
   to a sender that died between claim and send; it becomes `unconfirmed` (maybe delivered, never
   resent), and a run left `running` by a dead process becomes `interrupted`;
2. walk the due users (core.push.selectors.push_due_users) in keyset pages of PUSH_PAGE_SIZE;
3. per page (push_page_send): users without a fortune for the day are skipped and counted (never
   claimed: the next run sends them once the fortune exists — a push never promises what /fortune/today
   would then have to generate); the others are **claimed** by inserting their PushDelivery rows
   (unique per user and day; a row someone else holds is left alone), then each claimed user's active
   devices are sent to concurrently (threads doing only HTTP; the ORM stays on this thread), then the
   outcomes are written: sent, failed (by reason), devices deactivated, claims given back when nothing
   was sent (the run stopped before those sends, or no access token could be fetched). The threads
   backend claims page N+1 while page N's sends are in flight; --backend celery sends each page to a
   worker (core/push/celery_pages.py).

FCM HTTP v1 has no multicast: one request per device (core/push/fcm.py). A failed delivery (every
device refused it, or 429/5xx outlasted the retries) is final for the day; a connection that dropped
mid-request counts as failed, never resent, since FCM may have delivered it.

A crash between claim and send costs the claimed users that day's push (a missed push, never a second);
/ops/ shows them as "unconfirmed" and the run that found them counts them.
"""

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.models import FortuneResult, PushDelivery, PushDevice, PushRun
from core.push.fcm import (
    FcmAuthError,
    FcmClient,
    FcmConfig,
    Outcome,
    SendResult,
    fcm_client_build,
    fcm_config_load,
    fcm_say_off_once,
)
from core.push.selectors import push_due_page, push_due_users, push_local_now

logger = logging.getLogger("fortuna.push")

SEND_DUE_TASK = "core.push.send_due"
TITLE = "오늘의 운세 · {score}점"
UNCONFIRMED_REASON = "claimed, never confirmed"
STOPPED_BY_SIGNAL = "Stopped by a signal; claims not sent were given back."
RUN_DIED = "The sender process stopped heartbeating (killed?)."


class PushOff(Exception):
    """FCM_CREDENTIALS is not set: the feature is off."""


@dataclass(frozen=True, slots=True)
class PushOptions:
    now: dt.datetime | None = None  # default: the clock; tests pin it
    page_size: int | None = None
    concurrency: int | None = None
    rate_per_second: int | None = None
    backend: str = "threads"


@dataclass(slots=True)
class PageOutcome:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    released: int = 0
    no_fortune: int = 0
    devices_deactivated: int = 0
    messages: int = 0
    failures: Counter = field(default_factory=Counter)
    auth_error: str = ""

    def add(self, other: "PageOutcome") -> None:
        for name in ("claimed", "sent", "failed", "released", "no_fortune", "devices_deactivated", "messages"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failures.update(other.failures)
        self.auth_error = self.auth_error or other.auth_error


def push_message(*, content: dict, for_date: dt.date) -> tuple[dict, dict[str, str]]:
    """(notification, data) of a fortune: its headline and score shown, the date in the data payload
    (FCM data values are strings) for the app to open /fortune/{date}."""
    score = int(content["overall"]["score"])
    notification = {"title": TITLE.format(score=score), "body": str(content["summary"])}
    return notification, {"kind": "daily_fortune", "date": for_date.isoformat(), "score": str(score)}


def _fortunes(*, user_ids: list[int], for_date: dt.date) -> dict[int, dict]:
    rows = FortuneResult.objects.filter(user_id__in=user_ids, for_date=for_date).values_list(
        "user_id", "generation__content")
    return dict(rows)


def _user_result(results: list[SendResult]) -> tuple[str, str]:
    """(state, reason) of a user from their devices' results; state "" means: give the claim back."""
    if any(r.ok for r in results):
        return PushDelivery.State.SENT, ""
    if not results or all(r.outcome == Outcome.NOT_SENT for r in results):
        return "", ""
    # A connection failure may have been delivered: it is reported as such and never given back.
    final = [r for r in results if r.outcome != Outcome.NOT_SENT]
    if any(r.outcome == Outcome.NOT_SENT for r in results) and all(r.deactivate for r in final):
        return "", ""  # the dead tokens are deactivated; the device not tried yet gets it next run
    return PushDelivery.State.FAILED, final[0].outcome


@dataclass
class _Page:
    """One page between its claim and its record: the claim key, the users it holds, the sends in flight."""

    key: str
    mine: set[int]
    out: PageOutcome
    sends: list[tuple[int, int, Future]] = field(default_factory=list)  # (device id, user id, its send)
    auth_errors: list[str] = field(default_factory=list)


def _page_claim(*, run_id: int, for_date: dt.date, user_ids: list[int]) -> tuple[_Page, dict[int, dict]]:
    """Skip users without a fortune, claim the others (rows someone else holds are left alone); ORM only."""
    out = PageOutcome()
    fortunes = _fortunes(user_ids=user_ids, for_date=for_date)
    out.no_fortune = len(user_ids) - len(fortunes)
    key = uuid.uuid4().hex
    if not fortunes:
        return _Page(key=key, mine=set(), out=out), fortunes
    now = timezone.now()
    PushDelivery.objects.bulk_create(
        [PushDelivery(user_id=user_id, for_date=for_date, run_id=run_id, claim_key=key, claimed_at=now)
         for user_id in fortunes],
        ignore_conflicts=True,
    )
    mine = set(PushDelivery.objects.filter(for_date=for_date, user_id__in=list(fortunes), claim_key=key)
               .values_list("user_id", flat=True))
    out.claimed = len(mine)
    return _Page(key=key, mine=mine, out=out), fortunes


def _page_submit(*, page: _Page, fortunes: dict[int, dict], for_date: dt.date, pool: ThreadPoolExecutor,
                 client: FcmClient) -> None:
    """Hand every active device of the claimed users to the pool (the threads do only HTTP)."""
    devices = PushDevice.objects.filter(user_id__in=page.mine, active=True).values_list("pk", "user_id", "token")
    messages = {user_id: push_message(content=fortunes[user_id], for_date=for_date) for user_id in page.mine}

    def send(token: str, user_id: int) -> SendResult:
        notification, data = messages[user_id]
        try:
            return client.send(token=token, notification=notification, data=data)
        except FcmAuthError as exc:
            client.stop.set()  # the others stop before their next attempt
            page.auth_errors.append(str(exc))
            return SendResult(Outcome.NOT_SENT, status=None, attempts=0)

    page.sends = [(device_id, user_id, pool.submit(send, token, user_id)) for device_id, user_id, token in devices]


def _page_finish(page: _Page) -> PageOutcome:
    """Wait for the page's sends, then record them (devices deactivated, deliveries, claims given back)."""
    out = page.out
    results: dict[int, list[SendResult]] = defaultdict(list)
    deactivate: dict[str, list[int]] = defaultdict(list)
    for device_id, user_id, future in page.sends:
        result = future.result()
        results[user_id].append(result)
        out.messages += result.ok
        if result.deactivate:
            deactivate[result.outcome].append(device_id)
    if page.mine:
        _record(key=page.key, mine=page.mine, results=results, deactivate=deactivate, out=out)
    if page.auth_errors:
        out.auth_error = page.auth_errors[0]
    return out


def push_page_send(*, run_id: int, for_date: dt.date, user_ids: list[int], client: FcmClient,
                   concurrency: int) -> PageOutcome:
    """Claim, send and record one page of due users (see the module docstring): a Celery worker's page."""
    page, fortunes = _page_claim(run_id=run_id, for_date=for_date, user_ids=user_ids)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        _page_submit(page=page, fortunes=fortunes, for_date=for_date, pool=pool, client=client)
        return _page_finish(page)


def _record(*, key: str, mine: set[int], results: dict[int, list[SendResult]], deactivate: dict[str, list[int]],
            out: PageOutcome) -> None:
    now = timezone.now()
    for reason, device_ids in deactivate.items():
        out.devices_deactivated += PushDevice.objects.filter(pk__in=device_ids, active=True).update(
            active=False, deactivated_at=now, deactivated_reason=reason)
    groups: dict[tuple[str, str, int, int], list[int]] = defaultdict(list)
    release = []
    for user_id in mine:
        user_results = results.get(user_id, [])
        state, reason = _user_result(user_results)
        if not state:
            release.append(user_id)
            continue
        sent = sum(r.ok for r in user_results)
        groups[(state, reason, sent, len(user_results) - sent)].append(user_id)
        if state == PushDelivery.State.SENT:
            out.sent += 1
        else:
            out.failed += 1
            out.failures[reason] += 1
    # One UPDATE per distinct outcome (nearly always one: sent to its one device), not one per row.
    for (state, reason, sent, failed), user_ids in groups.items():
        PushDelivery.objects.filter(claim_key=key, user_id__in=user_ids).update(
            state=state, reason=reason, devices_sent=sent, devices_failed=failed, finished_at=now)
    if release:
        out.released += PushDelivery.objects.filter(user_id__in=release, claim_key=key,
                                                    state=PushDelivery.State.CLAIMED).delete()[0]


# --- the run ----------------------------------------------------------------------------------


def push_claims_expire(*, now: dt.datetime) -> tuple[int, int]:
    """Claims over PUSH_CLAIM_STALE_MINUTES old become unconfirmed; runs that stopped heartbeating as long
    become interrupted. Returns (claims, runs)."""
    stale = now - dt.timedelta(minutes=settings.PUSH_CLAIM_STALE_MINUTES)
    today = push_local_now(now).date()
    claims = PushDelivery.objects.filter(
        for_date__gte=today - dt.timedelta(days=1), state=PushDelivery.State.CLAIMED, claimed_at__lt=stale,
    ).update(state=PushDelivery.State.UNCONFIRMED, reason=UNCONFIRMED_REASON, finished_at=now)
    runs = PushRun.objects.filter(status=PushRun.Status.RUNNING, heartbeat_at__lt=stale).update(
        status=PushRun.Status.INTERRUPTED, stop_reason=RUN_DIED, finished_at=now)
    if claims:
        logger.warning("push: %d claimed deliveries were never confirmed (a sender died between claim and send); "
                       "they are not sent again today", claims)
    return claims, runs


def push_run_add(*, run_id: int, outcome: PageOutcome, pages_done: int = 1) -> None:
    """Add a page's outcome to its run's counters (locked: Celery workers add theirs concurrently)."""
    with transaction.atomic():
        run = PushRun.objects.select_for_update().get(pk=run_id)
        for name in ("claimed", "sent", "failed", "released", "no_fortune", "devices_deactivated", "messages"):
            setattr(run, name, getattr(run, name) + getattr(outcome, name))
        failures = Counter(run.failures)
        failures.update(outcome.failures)
        run.failures = dict(failures)
        run.pages_done += pages_done
        run.heartbeat_at = timezone.now()
        if outcome.auth_error and not run.stop_reason:
            run.stop_reason = outcome.auth_error
        run.save()


@dataclass(slots=True)
class PushResult:
    run: PushRun
    report_due: bool = False  # this run is the day's first at or after PUSH_REPORT_AT: send the morning summary


def push_run_start(*, now: dt.datetime, backend: str) -> PushRun:
    local = push_local_now(now)
    expired, _ = push_claims_expire(now=now)
    run = PushRun.objects.create(
        for_date=local.date(), backend=backend, started_at=now, heartbeat_at=now, pid=os.getpid(),
        hostname=socket.gethostname()[:255], unconfirmed=expired,
        due=push_due_users(for_date=local.date(), at=local.time()).count(),
    )
    logger.info("push run %s for %s at %s KST: %d users due", run.pk, run.for_date, local.strftime("%H:%M"), run.due)
    return run


def push_run_finish(*, run: PushRun, stop_reason: str = "", interrupted: bool = False) -> PushResult:
    run.refresh_from_db()
    if stop_reason:
        run.stop_reason = stop_reason
    if interrupted:
        run.status = PushRun.Status.INTERRUPTED
    elif run.stop_reason:
        run.status = PushRun.Status.FAILED
    elif run.failed:
        run.status = PushRun.Status.PARTIAL
    else:
        run.status = PushRun.Status.SUCCEEDED
    run.finished_at = timezone.now()
    run.save()
    return PushResult(run=run, report_due=_report_claim(run))


def _report_claim(run: PushRun) -> bool:
    """True for exactly one run a day: the first at or after PUSH_REPORT_AT (KST)."""
    local = push_local_now(run.started_at)
    if local.time() < dt.time.fromisoformat(settings.PUSH_REPORT_AT) or run.for_date != local.date():
        return False
    if PushRun.objects.filter(for_date=run.for_date, report_sent=True).exists():
        return False
    try:
        with transaction.atomic():
            PushRun.objects.filter(pk=run.pk).update(report_sent=True)
    except IntegrityError:  # a concurrent sender claimed the day's report
        return False
    run.report_sent = True
    return True


def _config() -> FcmConfig:
    config = fcm_config_load()
    if config is None:
        fcm_say_off_once()
        raise PushOff
    return config


def _pages_send(*, run: PushRun, local: dt.datetime, page_size: int, stop: threading.Event, client: FcmClient,
                concurrency: int) -> str:
    """The threads backend: page N+1 is claimed and its sends queued while page N's are in flight, so the
    database work of one page overlaps the HTTP of the other (two pages claimed at most). Returns the
    reason the run stopped ("" when it walked every page)."""
    after, pages, reason = 0, 0, ""
    in_flight: _Page | None = None
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        while not stop.is_set() and not reason:
            ids = push_due_page(for_date=local.date(), at=local.time(), after_id=after, limit=page_size)
            if not ids:
                break
            after, pages = ids[-1], pages + 1
            PushRun.objects.filter(pk=run.pk).update(pages=pages)
            page, fortunes = _page_claim(run_id=run.pk, for_date=local.date(), user_ids=ids)
            _page_submit(page=page, fortunes=fortunes, for_date=local.date(), pool=pool, client=client)
            if in_flight is not None:
                reason = _page_done(run=run, page=in_flight)
            in_flight = page
        if in_flight is not None:
            reason = _page_done(run=run, page=in_flight) or reason
    return reason


def _page_done(*, run: PushRun, page: _Page) -> str:
    outcome = _page_finish(page)
    push_run_add(run_id=run.pk, outcome=outcome)
    return outcome.auth_error


def _pages_dispatch(*, run: PushRun, local: dt.datetime, page_size: int, stop: threading.Event,
                    dispatch: Callable[[PushRun, list[int]], None], wait: Callable[[PushRun], str] | None) -> str:
    """The Celery backend: each page to a worker, then wait until the workers have done them all."""
    after, pages = 0, 0
    while not stop.is_set():
        ids = push_due_page(for_date=local.date(), at=local.time(), after_id=after, limit=page_size)
        if not ids:
            break
        after, pages = ids[-1], pages + 1
        PushRun.objects.filter(pk=run.pk).update(pages=pages)
        dispatch(run, ids)
    return wait(run) if wait is not None else ""


def push_send_due(*, options: PushOptions = PushOptions(), stop: threading.Event | None = None,
                  dispatch: Callable[[PushRun, list[int]], None] | None = None,
                  wait: Callable[[PushRun], str] | None = None) -> PushResult:
    """One sender run (the threads backend sends each page here; `dispatch`/`wait`, given by the Celery
    backend, send pages to workers and wait for them). Raises PushOff when FCM is not configured and
    ImproperlyConfigured when its configuration is wrong; an auth failure ends the run `failed` with the
    reason in stop_reason (the command exits non-zero)."""
    config = _config()
    now = options.now or timezone.now()
    local = push_local_now(now)
    stop = stop or threading.Event()
    page_size = options.page_size or settings.PUSH_PAGE_SIZE
    concurrency = options.concurrency or settings.FCM_CONCURRENCY
    rate = settings.FCM_RATE_PER_SECOND if options.rate_per_second is None else options.rate_per_second
    run = push_run_start(now=now, backend=options.backend)
    if dispatch is not None:
        reason = _pages_dispatch(run=run, local=local, page_size=page_size, stop=stop, dispatch=dispatch, wait=wait)
    else:
        with fcm_client_build(config=config, concurrency=concurrency, rate_per_second=rate, stop=stop) as client:
            reason = _pages_send(run=run, local=local, page_size=page_size, stop=stop, client=client,
                                 concurrency=concurrency)
    interrupted = stop.is_set() and not reason
    result = push_run_finish(run=run, stop_reason=reason or (STOPPED_BY_SIGNAL if interrupted else ""),
                             interrupted=interrupted)
    logger.info("push run %s %s: %d sent, %d failed, %d without a fortune, %d devices deactivated",
                run.pk, result.run.status, result.run.sent, result.run.failed, result.run.no_fortune,
                result.run.devices_deactivated)
    return result


def push_page_send_for_run(*, run_id: int, user_ids: list[int]) -> None:
    """A Celery worker's page: its own client, the run's date, the outcome added to the run."""
    run = PushRun.objects.get(pk=run_id)
    if run.status != PushRun.Status.RUNNING:
        return  # the run was stopped (an auth failure elsewhere): nothing more is sent
    config = _config()
    concurrency, rate = settings.FCM_CONCURRENCY, settings.FCM_RATE_PER_SECOND
    with fcm_client_build(config=config, concurrency=concurrency, rate_per_second=rate) as client:
        outcome = push_page_send(run_id=run_id, for_date=run.for_date, user_ids=user_ids, client=client,
                                 concurrency=concurrency)
    push_run_add(run_id=run_id, outcome=outcome)

"""A night that ends badly still reports (issue 17, item 3): a crash, a lost lock (any exception from
the run's heartbeat) or a stop sends the Slack/Discord report with the status and the reason, and no
NightlyRun is left `running` once nightly_fortunes has returned or raised."""

import datetime as dt

import pytest
from django.db import OperationalError
from django.utils import timezone

from core.models import FortuneResult, NightlyRun
from core.nightly import lifecycle, nightly
from core.nightly.executors import executor_for
from core.nightly.guards import STOP_SIGNAL, StopToken
from core.nightly.lifecycle import RunRecorder
from core.nightly.lock import LOCK_TAKEN, NightlyLockLost
from core.nightly.nightly import nightly_fortunes
from core.nightly.options import NightlyOptions
from tests.factories import users_create_many
from tests.nightly.helpers import BASE, TARGET, run_batch

# transaction=True: on PostgreSQL the run writes through its own writer connection, as in production.
pytestmark = pytest.mark.django_db(transaction=True)


class FailingExecutor:
    """The default executor, raising `error` (or asking `stop` to stop) on the nth submit."""

    def __init__(self, *, after: int, error: BaseException | None = None, stop: StopToken | None = None,
                 **kwargs) -> None:
        self.inner = executor_for(**kwargs)
        self.inline = self.inner.inline
        self.stores = self.inner.stores
        self.after, self.error, self.stop, self.submitted = after, error, stop, 0

    def submit(self, digest, inp, user_ids):
        self.submitted += 1
        if self.submitted == self.after:
            if self.error is not None:
                raise self.error
            self.stop.request(STOP_SIGNAL.format(signal="SIGTERM"), interrupted=True)
        return self.inner.submit(digest, inp, user_ids)

    def results(self, *, timeout, gather=0.0):
        return self.inner.results(timeout=timeout, gather=gather)

    def close(self):
        self.inner.close()


@pytest.fixture
def webhooks(settings, webhook_receiver):
    settings.SLACK_WEBHOOK_URL = webhook_receiver.url("/slack")
    settings.DISCORD_WEBHOOK_URL = webhook_receiver.url("/discord")
    return webhook_receiver


@pytest.fixture
def users():
    return users_create_many(count=40, seed=17)


def _reports(receiver, count: int = 1) -> tuple[list[str], list[dict]]:
    slack = [body["text"] for body in receiver.json("/slack")]
    discord = receiver.json("/discord")
    assert len(slack) == len(discord) == count, (slack, discord)
    return slack, discord


def _no_run_left_running() -> None:
    assert not NightlyRun.objects.filter(status=NightlyRun.Status.RUNNING).exists()


def test_a_crash_mid_run_is_reported_with_its_status_and_reason(users, webhooks):
    def executor(**kwargs):
        return FailingExecutor(after=12, error=RuntimeError("provider blew up"), **kwargs)

    options = NightlyOptions(base_date=BASE, page_size=5)
    with pytest.raises(RuntimeError, match="provider blew up"):
        nightly_fortunes(options=options, executor=executor)

    run = NightlyRun.objects.get()
    assert run.status == "failed" and run.stop_reason == "crashed: RuntimeError: provider blew up"
    _no_run_left_running()
    (slack,), (discord,) = _reports(webhooks)
    assert f"failed for {TARGET}" in slack and "crashed: RuntimeError: provider blew up" in slack
    assert "failed" in discord["content"] and "provider blew up" in discord["embeds"][0]["description"]


def test_a_lost_lock_raised_from_the_heartbeat_is_reported_and_the_run_finished(users, webhooks, monkeypatch):
    ticks = []
    original = RunRecorder.tick

    def tick(self, force=False):
        ticks.append(1)
        if len(ticks) == 3:
            raise NightlyLockLost(TARGET, why=LOCK_TAKEN)  # what core/nightly/lock.py raises
        return original(self, force)

    monkeypatch.setattr(RunRecorder, "tick", tick)
    with pytest.raises(NightlyLockLost):
        nightly_fortunes(options=NightlyOptions(base_date=BASE, page_size=5))

    _no_run_left_running()
    assert NightlyRun.objects.get().stop_reason.startswith("crashed: NightlyLockLost: The batch lock for target date")
    (slack,), _ = _reports(webhooks)  # a NightlyLocked, yet not a refusal: the run had started
    assert "failed" in slack and "NightlyLockLost" in slack


def test_a_crash_whose_own_bookkeeping_fails_still_leaves_no_run_running(users, webhooks, monkeypatch):
    # The run's own crash handler cannot reach the database (e.g. it restarted): the night settles
    # the run on a fresh connection before reporting.
    def crash(self, exc):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(lifecycle.RunRecorder, "crash", crash)

    def executor(**kwargs):
        return FailingExecutor(after=3, error=ValueError("unexpected"), **kwargs)

    with pytest.raises(OperationalError):
        nightly_fortunes(options=NightlyOptions(base_date=BASE, page_size=5), executor=executor)

    run = NightlyRun.objects.get()
    assert run.status == "failed" and "OperationalError" in run.stop_reason and run.finished_at
    (slack,), _ = _reports(webhooks)
    assert "failed" in slack and "server closed the connection unexpectedly" in slack


def test_a_crash_before_the_first_run_is_still_reported(users, webhooks, monkeypatch):
    def broken(**kwargs):
        raise OperationalError("could not connect to server")

    monkeypatch.setattr(nightly, "nightly_runs_mark_stale", broken)
    with pytest.raises(OperationalError):
        nightly_fortunes(options=NightlyOptions(base_date=BASE))

    assert not NightlyRun.objects.exists()
    (slack,), (discord,) = _reports(webhooks)
    assert f"failed for {TARGET}" in slack
    assert "crashed: OperationalError: could not connect to server (before this date's run started)" in slack
    assert "Run #" not in str(discord) or "before this date's run started" in discord["embeds"][0]["description"]


def test_a_stop_mid_run_is_reported_as_interrupted_with_its_reason(users, webhooks):
    stop = StopToken()

    def executor(**kwargs):
        return FailingExecutor(after=10, stop=stop, **kwargs)

    night = nightly_fortunes(options=NightlyOptions(base_date=BASE, page_size=5), stop=stop, executor=executor)

    (run,) = night.runs
    assert run.status == "interrupted" and run.stop_reason == "interrupted by SIGTERM"
    _no_run_left_running()
    (slack,), _ = _reports(webhooks)
    assert f"interrupted for {TARGET}" in slack and "Stopped: interrupted by SIGTERM" in slack


def test_a_stop_before_the_first_run_is_reported_and_the_night_is_incomplete(users, webhooks, monkeypatch):
    stop = StopToken()

    def natal_refresh():  # SIGTERM arrives while the natal pillars are being refreshed
        stop.request(STOP_SIGNAL.format(signal="SIGTERM"), interrupted=True)
        return []

    monkeypatch.setattr(nightly, "_natal_refresh", natal_refresh)
    night = nightly_fortunes(options=NightlyOptions(base_date=BASE), stop=stop)

    assert night.runs == [] and not FortuneResult.objects.exists()
    (incomplete,) = night.incomplete  # the command exits non-zero
    assert incomplete.status == "interrupted" and incomplete.target_date == TARGET
    (slack,), _ = _reports(webhooks)
    assert "interrupted by SIGTERM (before this date's run started)" in slack


def test_a_refused_night_sends_nothing(users, webhooks):
    from core.nightly.lock import NightlyLocked, nightly_lock

    with nightly_lock(target_date=TARGET), pytest.raises(NightlyLocked):
        nightly_fortunes(options=NightlyOptions(base_date=BASE))
    assert webhooks.received() == []


def test_the_second_run_fills_what_a_crashed_night_left_then_is_a_no_op(users, webhooks):
    # railway.fill.toml's command, at 23:40 KST after a 22:00 night that crashed part-way.
    fill = ("--workers", "10", "--max-runtime", "15", "--no-batch-ahead")
    today = timezone.localdate()
    tomorrow = today + dt.timedelta(days=1)

    made = []

    def executor(**kwargs):  # the first target (today's catch-up) runs through, the second crashes
        made.append(FailingExecutor(after=20 if made else 10**6, error=RuntimeError("worker lost"), **kwargs))
        return made[-1]

    with pytest.raises(RuntimeError):  # catch-up for today, then tomorrow: the crash is in tomorrow's
        nightly_fortunes(options=NightlyOptions(page_size=5), executor=executor)
    assert NightlyRun.objects.filter(target_date=tomorrow).get().status == "failed"
    eligible = len(users)
    assert FortuneResult.objects.filter(for_date=tomorrow).count() < eligible

    run_batch(*fill)
    assert FortuneResult.objects.filter(for_date=tomorrow).count() == eligible
    assert FortuneResult.objects.filter(for_date=today).count() == eligible

    before = FortuneResult.objects.count()
    run_batch(*fill)
    noop = NightlyRun.objects.order_by("-pk").first()
    assert (noop.target_date, noop.status, noop.generated, noop.llm_requests, noop.already_present) == (
        tomorrow, "succeeded", 0, 0, eligible)
    assert NightlyRun.objects.filter(started_at__gte=noop.started_at).count() == 1  # no catch-up: today is done
    assert FortuneResult.objects.count() == before
    _no_run_left_running()

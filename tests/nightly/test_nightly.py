"""The nightly service itself: its extension points (executor, hooks), the dry run through the same
service, and signal handling only where Python allows it (the main thread)."""

import datetime as dt
import os
import signal
import threading

import pytest

from core.nightly.executors import executor_for
from core.nightly.guards import STOP_SIGNAL, StopToken
from core.nightly.nightly import NightHooks, nightly_fortunes
from core.nightly.options import NightlyOptions
from core.nightly.process import stop_on_signals
from tests.factories import users_create_many
from tests.nightly.helpers import BASE, TARGET, fortune_map, table_counts

pytestmark = pytest.mark.django_db


class CountingBackend:
    """The default executor, counting what goes through it."""

    def __init__(self, **kwargs) -> None:
        self.inner = executor_for(**kwargs)
        self.inline = self.inner.inline
        self.stores = self.inner.stores
        self.submitted = 0

    def submit(self, digest, inp, user_ids):
        self.submitted += 1
        return self.inner.submit(digest, inp, user_ids)

    def results(self, *, timeout, gather=0.0):
        return self.inner.results(timeout=timeout, gather=gather)

    def close(self):
        self.inner.close()


class RecordingHooks(NightHooks):
    def __init__(self) -> None:
        self.calls = []

    def before_target(self, *, target, provider):
        self.calls.append(("before", target.target_date))

    def after_target(self, *, target, provider, run):
        self.calls.append(("after", target.target_date, run.status))


def test_a_backend_and_hooks_plug_in_around_each_target():
    users_create_many(count=12, seed=3)
    backends = []

    def factory(**kwargs):
        backends.append(CountingBackend(**kwargs))
        return backends[-1]

    hooks = RecordingHooks()
    night = nightly_fortunes(options=NightlyOptions(base_date=BASE), executor=factory, hooks=hooks)
    (run,) = night.runs
    assert hooks.calls == [("before", TARGET), ("after", TARGET, "succeeded")]
    assert len(backends) == 1 and backends[0].submitted == run.generations > 0
    assert len(fortune_map()) == 12 and not night.incomplete
    assert night.pruned == 0


def test_the_dry_run_goes_through_the_same_service_and_writes_nothing():
    users_create_many(count=5, seed=8)
    before = table_counts()
    night = nightly_fortunes(options=NightlyOptions(base_date=BASE, dry_run=True))
    assert table_counts() == before and night.runs == []
    (plan,) = night.plans
    assert (plan.eligible, plan.to_generate, plan.generations) == (5, 5, 5)


def test_signals_become_a_stop_request_on_the_main_thread_only():
    stop = StopToken()
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals(stop):
        assert signal.getsignal(signal.SIGTERM) is not before
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason == STOP_SIGNAL.format(signal="SIGTERM") and stop.interrupted
    assert signal.getsignal(signal.SIGTERM) is before

    outcome = {}

    def off_main() -> None:
        try:
            with stop_on_signals(StopToken()):
                outcome["handler"] = signal.getsignal(signal.SIGTERM)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=off_main)
    thread.start()
    thread.join()
    assert outcome == {"handler": before}


def test_the_default_hooks_leave_the_batch_api_alone_unless_day_ahead_is_on_or_batches_are_open(openai_settings):
    users_create_many(count=4, seed=2)
    night = nightly_fortunes(options=NightlyOptions(base_date=BASE, workers=2, retry_cooldown=0, batch_ahead=False))
    assert openai_settings.batch_state()["counters"] == {}  # not one Batch API call
    assert night.lines == []
    (run,) = night.runs
    assert run.cost_by_path["standard"]["requests"] == run.generations == 4
    assert run.cost_by_path["batch_api"]["requests"] == 0

    night = nightly_fortunes(options=NightlyOptions(base_date=BASE + dt.timedelta(days=1), workers=2, retry_cooldown=0,
                                               batch_ahead=True))
    # Day-ahead on: settle tomorrow (nothing was submitted for it), then submit the day after.
    ahead = BASE + dt.timedelta(days=3)
    assert [line.split(":")[0] for line in night.lines] == ["batch api collect", f"batch api {ahead}"]
    assert night.lines[0].startswith("batch api collect: 0 polled")
    assert openai_settings.batch_state()["counters"]["batches_created"] == 1

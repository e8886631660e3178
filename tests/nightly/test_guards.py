"""The stop rules and a run's final status, without a database."""

from decimal import Decimal

import pytest

from core.fortunes.providers.base import FailureReason, ProviderError
from core.nightly.guards import (
    PROVIDER_DOWN_MAX_STREAK,
    PROVIDER_DOWN_MIN_STREAK,
    STOP_DEADLINE,
    STOP_PROVIDER_DOWN,
    STOP_SAME_FAILURE,
    StopGuards,
    StopToken,
)
from core.nightly.lifecycle import nightly_run_status
from tests.fakes import FakeClock


def test_the_deadline_is_a_stop_reason_once_passed():
    clock = FakeClock(0.0)
    guards = StopGuards(stop=StopToken(), deadline=60.0, max_runtime_minutes=1, clock=clock)
    assert guards.why() == "" and guards.reason == ""
    clock.now = 60.0
    assert guards.why() == STOP_DEADLINE.format(minutes=1)
    assert guards.stopped and not guards.interrupted


def test_the_first_stop_request_wins_and_a_signal_is_an_interruption():
    guards = StopGuards(stop=StopToken(), deadline=1e9, max_runtime_minutes=1, budget=Decimal(0))
    guards.stop.request("interrupted by SIGTERM", interrupted=True)
    guards.failed(reason=FailureReason.TIMEOUT)
    guards.stop.request("something later")
    assert guards.reason == "interrupted by SIGTERM" and guards.interrupted


def test_the_breaker_needs_an_unbroken_streak_of_provider_down_reasons():
    guards = StopGuards(stop=StopToken(), deadline=1e9, max_runtime_minutes=1, workers=8)  # streak of 16
    for _ in range(15):
        guards.failed(reason=FailureReason.TIMEOUT)
    guards.failed(reason=FailureReason.BAD_REQUEST)  # the provider answered: not down
    for _ in range(15):
        guards.failed(reason=FailureReason.TIMEOUT)
    assert not guards.stopped
    guards.failed(reason=FailureReason.TIMEOUT)
    assert guards.reason == STOP_PROVIDER_DOWN.format(count=16, reason=FailureReason.TIMEOUT)


@pytest.mark.parametrize(
    ("failed", "stored", "stop_reason", "interrupted", "missing", "status"),
    [
        (0, 10, "", False, 0, "succeeded"),
        (0, 10, "interrupted by SIGTERM", True, 3, "interrupted"),
        (2, 0, "", False, 2, "failed"),
        (0, 0, "cost budget reached", False, 5, "failed"),
        (2, 8, "", False, 2, "partial"),
        (0, 8, "", False, 1, "partial"),  # someone still has no fortune without a failure
    ],
)
def test_a_runs_status(failed, stored, stop_reason, interrupted, missing, status):
    assert nightly_run_status(failed=failed, stored=stored, stop_reason=stop_reason, interrupted=interrupted,
                            missing=missing) == status


def test_the_breaker_streak_grows_with_the_workers_up_to_a_cap():
    def limit(workers: int) -> int:
        return StopGuards(stop=StopToken(), deadline=1e9, max_runtime_minutes=1, workers=workers).down_streak_limit

    assert limit(1) == PROVIDER_DOWN_MIN_STREAK
    assert limit(20) == 40
    assert limit(512) == PROVIDER_DOWN_MAX_STREAK < 2 * 512


def _server_error(status: int = 500, message: str = "HTTP 500: response_format is not supported") -> ProviderError:
    return ProviderError(message, reason=FailureReason.SERVER_ERROR, retryable=True, status_code=status)


def test_a_streak_of_identical_failures_of_any_reason_trips_the_breaker_and_says_why():
    guards = StopGuards(stop=StopToken(), deadline=1e9, max_runtime_minutes=1, workers=2)  # streak of 10
    for _ in range(PROVIDER_DOWN_MIN_STREAK - 1):
        guards.failed(reason=FailureReason.SERVER_ERROR, error=_server_error())
    assert not guards.stopped
    guards.failed(reason=FailureReason.SERVER_ERROR, error=_server_error())
    assert guards.reason == STOP_SAME_FAILURE.format(count=10, signature="server_error:500",
                                                     message="HTTP 500: response_format is not supported")
    guards = StopGuards(stop=StopToken(), deadline=1e9, max_runtime_minutes=1, workers=64)  # streak of 128
    for _ in range(PROVIDER_DOWN_MAX_STREAK):
        guards.failed(reason=FailureReason.SERVER_ERROR, error=_server_error(message="x" * 300))
    assert guards.stopped and len(guards.reason) <= 255  # NightlyRun.stop_reason holds it whole


@pytest.mark.parametrize("interruption", ["success", "other_status", "other_reason"])
def test_the_identical_streak_is_broken_by_a_success_or_a_different_failure(interruption):
    guards = StopGuards(stop=StopToken(), deadline=1e9, max_runtime_minutes=1, workers=2)
    for _ in range(9):
        guards.failed(reason=FailureReason.SERVER_ERROR, error=_server_error())
    if interruption == "success":
        guards.succeeded(usage={})
    elif interruption == "other_status":
        guards.failed(reason=FailureReason.SERVER_ERROR, error=_server_error(502))
    else:
        guards.failed(reason=FailureReason.INVALID_OUTPUT)
    for _ in range(9):
        guards.failed(reason=FailureReason.SERVER_ERROR, error=_server_error())
    assert not guards.stopped

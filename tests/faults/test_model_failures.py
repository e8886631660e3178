"""The model's own failure modes over a whole night, through the stub and the real SDK: a server that
refuses every request the same way, a 4xx no retry can fix, answers that are billed though invalid,
and the output cap on every request (issue 17.7)."""

from collections import Counter

import pytest
from django.core.management.base import CommandError

from core.fortunes.pricing import path_usage_from
from core.fortunes.prompt import output_token_cap
from core.management.commands import generate_daily_fortunes as command
from core.models import FortuneGeneration, NightlyRun
from core.nightly.guards import PROVIDER_DOWN_MIN_STREAK
from tests.factories import users_create_many
from tests.faults.reports import assert_reported
from tests.nightly.helpers import BASE, eligible_ids, fortune_map, run_batch

pytestmark = pytest.mark.django_db
WORKERS = 2
FAST = ("--date", BASE.isoformat(), "--workers", str(WORKERS), "--retry-cooldown", "0")
STREAK = max(PROVIDER_DOWN_MIN_STREAK, 2 * WORKERS)  # core.nightly.guards' streak for this many workers


def _run() -> NightlyRun:
    return NightlyRun.objects.get()


def _night_stopped() -> NightlyRun:
    with pytest.raises(CommandError) as err:
        run_batch(*FAST, "--max-attempts", "3")
    assert err.value.returncode == command.EXIT_INCOMPLETE
    return _run()


def test_a_server_answering_500_to_everything_stops_the_night_via_the_breaker(openai_settings, slack_receiver):
    """llama.cpp refusing response_format with a 500: before, every input was tried the maximum
    number of times, twice (main round and retry round), all night."""
    stub = openai_settings
    stub.configure(fail_when_contains=[""], fail_status=500)  # every request, the same body
    users = users_create_many(count=60, seed=21)
    run = _night_stopped()
    requests = stub.counters()["requests"]
    assert run.stop_reason.startswith(f"provider unusable: {STREAK} generations in a row failed the same way "
                                      f"(server_error:500); fix the provider or the request")
    assert run.stop_reason.endswith("Last answer: HTTP 500: Error code: 500 - Stub failure for a matching input "
                                    "(HTTP 500).")
    assert "retry round" not in run.notes
    # The generations of the streak and those in flight beside them, each with its attempts; nothing more.
    assert requests == run.llm_requests <= (STREAK + 2 * WORKERS) * 3
    assert requests < len(users)  # against 60 × 3 × 2 before: well under one request per input
    assert run.status == "failed" and fortune_map() == {}
    assert_reported(slack_receiver, [run])


def test_a_400_is_attempted_once_and_a_streak_of_them_stops_the_night(openai_settings, slack_receiver):
    stub = openai_settings
    stub.configure(fail_when_contains=[""], fail_status=400)
    users_create_many(count=60, seed=22)
    run = _night_stopped()
    attempts_per_input = Counter(r["sha256"] for r in stub.requests())
    assert set(attempts_per_input.values()) == {1}
    # The streak, and what the workers had already sent before the main thread counted it.
    assert STREAK <= len(attempts_per_input) < 40
    assert run.stop_reason.startswith(f"provider unusable: {STREAK} generations in a row failed the same way "
                                      f"(bad_request:400)")
    assert_reported(slack_receiver, [run])


def test_invalid_answers_are_billed_in_the_runs_tokens_and_cost_and_every_request_is_capped(openai_settings,
                                                                                           slack_receiver):
    stub = openai_settings
    stub.configure(seed=3, faults={"malformed": 0.15, "length": 0.1, "runaway": 0.1})
    users_create_many(count=20, seed=23)
    run_batch("--date", BASE.isoformat(), "--workers", "4", "--retry-cooldown", "0")
    run = _run()
    counters = stub.counters()
    assert run.status == "succeeded" and set(fortune_map()) == eligible_ids()
    assert all(counters["by_fault"].get(kind) for kind in ("malformed", "length", "runaway"))
    # Every answer the server billed is in the run's tokens and cost, valid or not.
    assert (run.tokens_in, run.tokens_out) == (counters["tokens_billed"]["in"], counters["tokens_billed"]["out"])
    standard = path_usage_from(cost_by_path=run.cost_by_path, path="standard")
    assert (standard.tokens_in, standard.tokens_out) == (run.tokens_in, run.tokens_out)
    assert standard.requests == run.llm_requests == counters["requests"] > FortuneGeneration.objects.count()
    # Each generation's stored tokens are its own (valid) answer's only.
    assert sum(FortuneGeneration.objects.values_list("tokens_out", flat=True)) < run.tokens_out
    # The output cap went with every request, and no runaway answer billed past it.
    assert counters["by_output_cap"] == {str(output_token_cap()): counters["requests"]}
    assert_reported(slack_receiver, [run])

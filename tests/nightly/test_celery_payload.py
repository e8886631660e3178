"""The chunk row's JSON both ways (core.nightly.executors.celery.payload) and the worker's per-input
count of result rows: what the celery executor reports to the engine must mean what the worker did."""

import json

import pytest

from core.fortunes.providers import Generated, ProviderError
from core.nightly.bulk import ResultsWritten
from core.nightly.executors.celery.payload import failed_encode, outcome_decode, stored_encode
from core.nightly.executors.celery.worker import _skipped_per_input, users_per_input
from core.nightly.outcomes import Stored
from core.resilience import Attempted, is_transient


def _round_trip(entry: dict) -> Stored | Attempted:
    return outcome_decode(json.loads(json.dumps(entry)))  # as stored in the JSON field


def test_a_stored_input_comes_back_with_its_generation_users_requests_and_billed_tokens():
    outcome = Attempted(generated=Generated(content=None, tokens_in=300, tokens_out=600, service_tier="flex"),
                        error=None, attempts=2, billed_failures=[("flex", 300, 50)])
    stored = _round_trip(stored_encode(generation_id=41, users=3, new=True, outcome=outcome))
    assert stored == Stored(generation_id=41, users=3, new=True, attempts=2, tier="flex", tokens_in=300,
                            tokens_out=600, billed_failures=(("flex", 300, 50),))


def test_an_input_stored_already_costs_nothing():
    stored = _round_trip(stored_encode(generation_id=7, users=1, new=False, outcome=None))
    assert (stored.generation_id, stored.users, stored.new, stored.attempts, stored.tokens_in) == (7, 1, False, 0, 0)


@pytest.mark.parametrize(("reason", "transient"), [("rate_limited", True), ("invalid_request", False)])
def test_a_failed_input_keeps_its_reason_so_the_engines_retry_round_can_tell(reason, transient):
    error = ProviderError("429 from upstream", reason=reason, retryable=transient)
    failed = _round_trip(failed_encode(Attempted(generated=None, error=error, attempts=3,
                                                 billed_failures=[("standard", 10, 0)])))
    assert isinstance(failed, Attempted) and not failed.stopped and failed.generated is None
    assert (failed.error.reason, str(failed.error), failed.attempts) == (reason, "429 from upstream", 3)
    assert is_transient(failed.error) is transient
    assert failed.billed_failures == [("standard", 10, 0)]


def test_rows_per_input_leave_out_skipped_users_and_add_up_to_what_was_written():
    waiting = {"a": [1, 2, 3], "b": [4, 5], "c": [6]}
    # User 2 was deleted, user 4 changed their birth data, and one row existed already.
    counts = users_per_input(waiting, ResultsWritten(stored=2, gone=[2], changed=[4]))
    assert counts == {"a": 2, "b": 0, "c": 0}
    assert sum(counts.values()) == 2
    assert users_per_input(waiting, ResultsWritten(stored=6)) == {"a": 3, "b": 2, "c": 1}


def test_the_users_a_store_skipped_come_back_with_their_input():
    waiting = {"a": [1, 2, 3], "b": [4, 5]}
    skipped = _skipped_per_input(waiting, ResultsWritten(stored=3, gone=[2], changed=[4]))
    assert skipped == {"a": {"gone": [2], "changed": []}, "b": {"gone": [], "changed": [4]}}
    stored = _round_trip(stored_encode(generation_id=9, users=2, new=True, outcome=None, **skipped["a"]))
    assert (stored.gone, stored.changed) == ((2,), ())
    assert _skipped_per_input(waiting, ResultsWritten(stored=5)) == {}

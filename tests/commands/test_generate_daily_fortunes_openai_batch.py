"""generate_daily_fortunes with the day-ahead Batch API, end to end: the command, the nightly service's
Batch API hooks, the real SDK and the stub server (never patched)."""

import datetime as dt
import json
from decimal import Decimal

import pytest
from django.conf import settings
from django.core.management.base import CommandError

from core.fortunes.inputs import GenerationInput
from core.fortunes.pricing import PRICE_UNKNOWN, cost_estimate
from core.management.commands import generate_daily_fortunes as command
from core.models import NightlyRun, OpenAIBatch, User
from core.nightly.executors import openai_batch
from core.nightly.lock import nightly_lock
from tests.factories import user_create, users_create_many
from tests.nightly.helpers import BASE, eligible_ids, fortune_map, run_batch, table_counts

pytestmark = pytest.mark.django_db
B1, B2, B3 = (BASE + dt.timedelta(days=n) for n in (1, 2, 3))
FAST = ("--workers", "2", "--retry-cooldown", "0")
CHAT = "/v1/chat/completions"


@pytest.fixture
def users(openai_settings):
    made = users_create_many(count=20, seed=9)
    made += [user_create(birth_date_solar=dt.date(1979, 4, 4), gender="F") for _ in range(3)]  # one shared input
    return made


def _night(base: dt.date, *extra: str) -> str:
    return run_batch("--date", base.isoformat(), "--batch-ahead", *FAST, *extra)


def _chat(stub) -> int:
    return stub.counters()["by_path"].get(CHAT, 0)


def _run(target_date: dt.date) -> NightlyRun:
    return NightlyRun.objects.filter(target_date=target_date).order_by("-pk").first()


def _hashes(users, day: dt.date) -> dict[str, set[int]]:
    by_hash: dict[str, set[int]] = {}
    for user in users:
        user.refresh_from_db()
        inp = GenerationInput.for_user(user=user, for_date=day, generator=f"openai:{settings.OPENAI_MODEL}")
        by_hash.setdefault(inp.hash, set()).add(user.pk)
    return by_hash


def _outcomes(stub, day: dt.date) -> dict[str, set[str]]:
    """custom_ids by outcome of the stub's batches for one target date."""
    merged: dict[str, set[str]] = {}
    for batch in stub.batch_state()["batches"]:
        if batch["metadata"].get("target_date") != day.isoformat():
            continue
        for kind, ids in batch["outcomes"].items():
            merged.setdefault(kind, set()).update(ids)
    return merged


def test_night_1_submits_b2_and_night_2_stores_it_with_no_synchronous_request_then_submits_b3(users, openai_settings):
    stub = openai_settings
    by_hash = _hashes(users, B2)
    out = _night(BASE)
    assert set(fortune_map(for_date=B1)) == eligible_ids()  # tonight's synchronous pass
    [row] = OpenAIBatch.objects.all()
    assert (row.target_date, row.state, row.request_count) == (B2, "submitted", len(by_hash))
    assert f"batch api {B2}: {len(users)} users, {len(by_hash)} requests" in out
    night_1 = _run(B1)
    paths = night_1.cost_by_path
    assert paths["standard"]["requests"] == night_1.generations and paths["batch_api"]["requests"] == 0
    assert Decimal(paths["saving"]) == 0
    after_night_1 = _chat(stub)

    out = _night(B1)
    assert _chat(stub) == after_night_1  # 0 synchronous requests: the batch had every B2 user
    assert set(fortune_map(for_date=B2)) == eligible_ids()
    row.refresh_from_db()
    assert (row.state, row.stored_users) == ("collected", len(users))
    night_2 = _run(B2)
    assert (night_2.status, night_2.already_present, night_2.generated) == ("succeeded", len(users), 0)
    paths = night_2.cost_by_path
    assert (paths["batch_api"]["requests"], paths["standard"]["requests"], paths["flex"]["requests"]) == (
        len(by_hash), 0, 0)
    batch_cost = cost_estimate(model=settings.OPENAI_MODEL, tier="batch", tokens_in=row.tokens_in,
                               tokens_out=row.tokens_out)
    assert Decimal(paths["batch_api"]["cost"]) == batch_cost == night_2.estimated_cost > 0
    assert Decimal(paths["saving"]) == Decimal(paths["standard_equivalent"]) - batch_cost > 0
    assert f"saving ~${paths['saving']} against all-standard" in out  # the run summary line
    assert f"{len(users)} users stored from {len(by_hash)} lines" in out
    assert OpenAIBatch.objects.get(target_date=B3).state == "submitted"  # and B+3 went out


def test_failed_lines_and_only_they_go_synchronous(users, openai_settings):
    stub = openai_settings
    stub.batch_configure(fail_5xx=0.3, fail_4xx=0.2, seed=7)
    by_hash = _hashes(users, B2)
    _night(BASE)
    before = _chat(stub)
    _night(B1)
    outcomes = _outcomes(stub, B2)
    failed = outcomes.get("5xx", set()) | outcomes.get("4xx", set())
    assert failed and outcomes["ok"]
    assert _chat(stub) - before == len(failed)  # exactly the failed lines' inputs, once each
    assert set(fortune_map(for_date=B2)) == eligible_ids()
    paths = _run(B2).cost_by_path
    assert paths["standard"]["requests"] == len(failed)
    assert paths["batch_api"]["requests"] == len(by_hash)  # every line is billed, failed or not


def test_a_batch_still_running_at_night_2_is_cancelled_its_partial_output_stored_the_rest_synchronous(
        users, openai_settings):
    stub = openai_settings
    by_hash = _hashes(users, B2)
    stub.batch_configure(stuck=True, cancel_delay=0.2, partial_share=0.5, seed=2)
    _night(BASE)
    before = _chat(stub)
    _night(B1, "--cancel-wait", "10")
    done = _outcomes(stub, B2)["ok"]
    assert 0 < len(done) < len(by_hash)
    row = OpenAIBatch.objects.get(target_date=B2)
    assert (row.state, row.remote_status) == ("collected", "cancelled") and row.cancel_requested_at
    assert _chat(stub) - before == len(by_hash) - len(done)
    assert set(fortune_map(for_date=B2)) == eligible_ids()  # everybody served
    assert _run(B2).status == "succeeded"


def test_flex_falls_back_to_the_default_tier_on_resource_unavailable(users, openai_settings, settings):
    stub = openai_settings
    settings.OPENAI_SERVICE_TIER = "flex"
    stub.configure(fail_when_contains=["flex"], fail_status=429, fail_code="resource_unavailable")
    run_batch("--date", BASE.isoformat(), *FAST)
    tiers = [json.loads(r["body"]).get("service_tier") for r in stub.requests(bodies=True) if r["path"] == CHAT]
    assert tiers[0] == "flex" and None in tiers  # asked for flex, served on the default tier
    assert set(fortune_map(for_date=BASE + dt.timedelta(days=1))) == eligible_ids()
    run = _run(B1)
    assert run.status == "succeeded" and run.cost_by_path["flex"]["requests"] == 0
    assert run.cost_by_path["standard"]["requests"] == run.generations


def test_flex_is_used_and_priced_as_flex_but_not_near_the_deadline(users, openai_settings, settings):
    stub = openai_settings
    settings.OPENAI_SERVICE_TIER = "flex"
    settings.FORTUNE_FLEX_FALLBACK_MINUTES = 30
    run_batch("--date", BASE.isoformat(), *FAST)
    run = _run(B1)
    assert run.cost_by_path["flex"]["requests"] == run.generations > 0
    assert Decimal(run.cost_by_path["saving"]) > 0
    assert {json.loads(r["body"]).get("service_tier") for r in stub.requests(bodies=True)} == {"flex"}

    stub.reset()
    run_batch("--date", B1.isoformat(), *FAST, "--max-runtime", "20")  # the whole run is inside the last 30 min
    assert {json.loads(r["body"]).get("service_tier") for r in stub.requests(bodies=True)} == {None}
    assert _run(B2).cost_by_path["flex"]["requests"] == 0


def test_dry_run_prints_what_tonight_would_submit_ahead_and_its_cost_each_way(users, openai_settings):
    before = table_counts()
    out = run_batch("--date", BASE.isoformat(), "--batch-ahead", "--dry-run")
    assert table_counts() == before and openai_settings.counters()["requests"] == 0
    by_hash = _hashes(users, B2)
    assert f"nightly dry run {B1}" in out
    [line] = [line for line in out.splitlines() if line.startswith("batch api dry run")]
    assert line.startswith(f"batch api dry run {B2}: {len(users)} users, {len(by_hash)} requests")
    assert "on the Batch API vs" in line and "standard" in line


def test_collect_batches_collects_every_open_date_and_skips_a_locked_one(users, openai_settings):
    _night(BASE)
    _night(B1)  # B+2 collected, B+3 open
    out = run_batch("--collect-batches")
    assert f"{B3}: batch api collect: 1 polled, 1 collected" in out
    assert set(fortune_map(for_date=B3)) == eligible_ids()
    assert run_batch("--collect-batches").strip() == openai_batch.COLLECT_NOTHING_OPEN

    user_create(birth_date_solar=dt.date(1990, 1, 1), gender="M")
    _night(B2)  # B+4 open
    with nightly_lock(target_date=BASE + dt.timedelta(days=4)):
        out = run_batch("--collect-batches")
    assert out.strip() == openai_batch.COLLECT_SKIPPED_LOCKED.format(target_date=BASE + dt.timedelta(days=4))
    assert OpenAIBatch.objects.get(target_date=BASE + dt.timedelta(days=4)).state == "submitted"


def test_an_api_error_on_submission_is_recorded_and_never_fails_the_night(users, openai_settings, settings):
    stub = openai_settings
    settings.FORTUNE_BATCH_AHEAD = True  # the setting alone turns day-ahead on
    stub.batch_configure(upload_failures=1)
    out = run_batch("--date", BASE.isoformat(), *FAST)  # exit 0: the synchronous night is complete
    assert set(fortune_map(for_date=B1)) == eligible_ids()
    row = OpenAIBatch.objects.get()
    assert row.state == "planned" and row.last_error.startswith("upload failed: InternalServerError")
    assert f"stopped: {row.last_error}" in out
    assert f"stopped: {row.last_error}" in _run(B1).notes  # in the run's record too

    _night(B1)  # the next night: the unconfirmed upload is discarded, B+2 goes synchronous, B+3 is submitted
    row.refresh_from_db()
    assert row.state == "discarded"
    assert set(fortune_map(for_date=B2)) == eligible_ids()
    assert OpenAIBatch.objects.get(target_date=B3).state == "submitted"


@pytest.mark.parametrize(("args", "message"), [
    (("--cancel-wait", "-1"), command.CANCEL_WAIT_INVALID.format(value=-1.0)),
    (("--cancel-wait", "soon"), command.CANCEL_WAIT_INVALID.format(value="soon")),
    (("--cancel-wait", "3601"), command.CANCEL_WAIT_INVALID.format(value=3601.0)),
    (("--collect-batches", "--dry-run"), command.COLLECT_ALONE.format(flags="--dry-run")),
    (("--collect-batches", "--date", "2030-03-10", "--batch-ahead"),
     command.COLLECT_ALONE.format(flags="--date, --batch-ahead")),
])
def test_bad_flag_values_fail_with_their_message(args, message):
    with pytest.raises(CommandError) as caught:
        run_batch(*args)
    assert str(caught.value) == message and caught.value.returncode == command.EXIT_USAGE


def test_batch_ahead_needs_the_openai_provider(settings):
    settings.FORTUNE_PROVIDER = "local"
    User.objects.all().delete()
    with pytest.raises(CommandError) as caught:
        run_batch("--date", BASE.isoformat(), "--batch-ahead")
    assert caught.value.returncode == command.EXIT_USAGE
    assert "FORTUNE_PROVIDER=openai" in str(caught.value)


def test_a_model_without_a_price_is_refused_before_the_night(openai_settings, settings):
    settings.OPENAI_MODEL = "gpt-unpriced"
    with pytest.raises(CommandError) as caught:
        run_batch("--date", BASE.isoformat())
    assert str(caught.value) == command.PROVIDER_MISCONFIGURED.format(
        error=PRICE_UNKNOWN.format(model="gpt-unpriced", tier="standard"))
    assert not NightlyRun.objects.exists()


def test_the_night_holds_the_lock_of_the_day_it_submits(users, openai_settings):
    with nightly_lock(target_date=B2):
        with pytest.raises(CommandError) as caught:
            _night(BASE)
    assert caught.value.returncode == command.EXIT_LOCKED
    assert run_batch("--date", BASE.isoformat(), "--no-batch-ahead", *FAST)  # without day-ahead B+2 is not needed


def test_a_one_user_run_collects_what_is_done_but_never_cancels_the_dates_batches(users, openai_settings):
    stub = openai_settings
    stub.batch_configure(stuck=True)
    _night(BASE)
    run_batch("--date", B1.isoformat(), "--user-id", str(users[0].pk), *FAST)
    row = OpenAIBatch.objects.get(target_date=B2)
    assert (row.state, row.remote_status, row.cancel_requested_at) == ("submitted", "in_progress", None)
    assert set(fortune_map(for_date=B2)) == {users[0].pk}  # that user, synchronously

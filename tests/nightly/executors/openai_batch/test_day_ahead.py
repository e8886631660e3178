"""Day-ahead Batch API generation through the stub server and the real SDK (the SDK is never patched)."""

import datetime as dt
import hashlib
import io
import json
from decimal import Decimal

import openai
import pytest
from django.conf import settings

from core.fortunes.inputs import GenerationInput
from core.fortunes.pricing import cost_estimate
from core.fortunes.prompt import build_messages, output_token_cap
from core.fortunes.providers import ProviderConfigError
from core.fortunes.providers.openai import chat_completion_body
from core.models import FortuneGeneration, FortuneResult, OpenAIBatch, User
from core.nightly.executors import openai_batch
from core.nightly.executors.openai_batch import (
    BATCH_API_NEEDS_OPENAI,
    METADATA_KEY,
    openai_batch_cancel_open,
    openai_batch_collect,
    openai_batch_collect_summary,
    openai_batch_open_dates,
    openai_batch_settle,
    openai_batch_submit_ahead,
    openai_batch_submit_summary,
)
from core.nightly.hooks import NightHooks
from core.nightly.nightly import nightly_fortunes
from core.nightly.options import NightlyOptions
from tests.factories import user_create, users_create_many
from tests.nightly.executors.openai_batch.crash import crash_patches
from tests.nightly.helpers import BASE, eligible_ids, fortune_map, run_batch, table_counts

pytestmark = pytest.mark.django_db
AHEAD = BASE + dt.timedelta(days=2)  # what the night of BASE submits
NIGHT_2 = BASE + dt.timedelta(days=1)  # the night whose synchronous pass fills AHEAD


class Killed(Exception):
    """Stands for the process dying at a step boundary (tests/nightly/executors/openai_batch/crash.py)."""


@pytest.fixture
def kill_at(monkeypatch):
    """kill_at(point): the next time the Batch API reaches point, Killed is raised there."""
    def arm(point: str, *, times: int = 1) -> None:
        def crash() -> None:
            raise Killed(point)
        for target, name, value in crash_patches(point, crash, times=times):
            monkeypatch.setattr(target, name, value)
    return arm


@pytest.fixture
def users(openai_settings):
    made = users_create_many(count=24, seed=3)
    made += [user_create(birth_date_solar=dt.date(1979, 4, 4), gender="F") for _ in range(3)]  # one shared input
    return made


def _input(user: User, day: dt.date = AHEAD) -> GenerationInput:
    user.refresh_from_db()
    return GenerationInput.for_user(user=user, for_date=day, generator=f"openai:{settings.OPENAI_MODEL}")


def _hash_users(users) -> dict[str, set[int]]:
    by_hash: dict[str, set[int]] = {}
    for user in users:
        by_hash.setdefault(_input(user).hash, set()).add(user.pk)
    return by_hash


def _sync_night_2(stub) -> int:
    """The synchronous pass of night 2 for AHEAD alone (no Batch API hooks: the command's night is
    tested in tests/commands/test_generate_daily_fortunes_openai_batch.py); returns the chat requests
    made so far."""
    nightly_fortunes(options=NightlyOptions(base_date=NIGHT_2, workers=2, retry_cooldown=0), hooks=NightHooks())
    return stub.counters()["by_path"].get("/v1/chat/completions", 0)


def _outcomes(stub) -> dict[str, set[str]]:
    merged: dict[str, set[str]] = {}
    for batch in stub.batch_state()["batches"]:
        for kind, ids in batch["outcomes"].items():
            merged.setdefault(kind, set()).update(ids)
    return merged


def test_night_1_submits_night_2_stores_with_no_synchronous_request(users, openai_settings):
    stub = openai_settings
    by_hash = _hash_users(users)
    report = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    assert (report.users, report.requests, report.batches_created) == (len(users), len(by_hash), 1)
    assert stub.counters()["requests"] == 0  # no synchronous request at all
    row = OpenAIBatch.objects.get()
    assert (row.state, row.target_date, row.request_count, row.remote_status) == ("submitted", AHEAD, len(by_hash),
                                                                                   "in_progress")
    assert sorted(row.input_hashes) == sorted(by_hash)
    [remote] = stub.batch_state()["batches"]
    assert remote["metadata"][METADATA_KEY] == row.metadata_key

    collected = openai_batch_collect(target_date=AHEAD)
    assert (collected.collected, collected.stored_users, collected.lines_ok) == (1, len(users), len(by_hash))
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()
    assert collected.cost_batch == cost_estimate(model=settings.OPENAI_MODEL, tier="batch",
                                                 tokens_in=collected.tokens_in, tokens_out=collected.tokens_out) > 0
    assert abs(collected.cost_batch * 2 - collected.cost_standard) <= Decimal("0.000001")
    assert f"{len(users)} users stored from {len(by_hash)} lines" in openai_batch_collect_summary(report=collected)
    row.refresh_from_db()
    assert (row.state, row.completed_lines, row.failed_lines, row.stored_users) == (
        "collected", len(by_hash), 0, len(users))
    assert row.tokens_in > 0 and row.estimated_cost > 0

    assert _sync_night_2(openai_settings) == 0  # night 2's synchronous pass has nothing left for those users
    assert openai_batch_open_dates() == []


def test_a_line_carries_the_same_body_as_the_synchronous_request(users, openai_settings):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    row = OpenAIBatch.objects.get()
    client = openai.OpenAI(api_key="sk-test-stub", base_url=openai_settings.base_url, max_retries=0)
    lines = [json.loads(raw) for raw in client.files.content(row.input_file_id).text.splitlines()]
    client.close()
    inp = _input(users[0])
    [line] = [line for line in lines if line["custom_id"] == inp.hash]
    assert (line["method"], line["url"]) == ("POST", "/v1/chat/completions")
    assert line["body"] == json.loads(json.dumps(chat_completion_body(model=settings.OPENAI_MODEL,
                                                                      messages=build_messages(inp))))
    # The output cap goes with every line, as with every synchronous request.
    assert {line["body"]["max_completion_tokens"] for line in lines} == {output_token_cap()}


def test_failed_lines_leave_exactly_their_inputs_for_the_synchronous_pass(users, openai_settings):
    stub = openai_settings
    stub.batch_configure(fail_5xx=0.25, fail_4xx=0.2, fail_malformed=0.15, seed=7)
    by_hash = _hash_users(users)
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    report = openai_batch_collect()
    outcomes = _outcomes(stub)
    failed = outcomes.get("5xx", set()) | outcomes.get("4xx", set()) | outcomes.get("malformed", set())
    assert outcomes.get("5xx") and outcomes.get("4xx") and outcomes.get("malformed")  # the seed gives all three
    missing = {pk for digest in failed for pk in by_hash[digest]}
    assert eligible_ids() - set(fortune_map(for_date=AHEAD)) == missing
    assert report.lines_failed == len(failed) and report.lines_ok == len(by_hash) - len(failed)
    assert OpenAIBatch.objects.get().failed_lines == len(failed)

    assert _sync_night_2(openai_settings) == len(failed)
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()


def test_a_batch_still_running_is_cancelled_and_its_partial_output_stored(users, openai_settings):
    stub = openai_settings
    stub.batch_configure(stuck=True, cancel_delay=0.3, partial_share=0.5, seed=2)
    by_hash = _hash_users(users)
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    assert openai_batch_collect(target_date=AHEAD).still_open == 1
    assert fortune_map(for_date=AHEAD) == {}

    report = openai_batch_cancel_open(target_date=AHEAD, wait_seconds=10, poll_seconds=0.1)
    assert (report.cancel_requested, report.still_open, report.collect.collected) == (1, 0, 1)
    done = _outcomes(stub)["ok"]
    assert 0 < len(done) < len(by_hash)
    assert set(fortune_map(for_date=AHEAD)) == {pk for digest in done for pk in by_hash[digest]}
    row = OpenAIBatch.objects.get()
    assert (row.state, row.remote_status) == ("collected", "cancelled") and row.cancel_requested_at

    assert _sync_night_2(openai_settings) == len(by_hash) - len(done)
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()


def test_a_cancel_wait_that_runs_out_leaves_the_batch_to_the_synchronous_pass(users, openai_settings):
    openai_settings.batch_configure(stuck=True, cancel_delay=30)
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    report = openai_batch_cancel_open(target_date=AHEAD, wait_seconds=0.3, poll_seconds=0.1)
    assert (report.cancel_requested, report.still_open) == (1, 1)
    assert OpenAIBatch.objects.get().remote_status == "cancelling"
    assert _sync_night_2(openai_settings) == len(_hash_users(users))


def test_expiry_stores_the_partial_output(users, openai_settings):
    stub = openai_settings
    stub.batch_configure(expire=True, partial_share=0.6, seed=4)
    by_hash = _hash_users(users)
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    report = openai_batch_collect()
    outcomes = _outcomes(stub)
    assert outcomes["batch_expired"] and outcomes["ok"]
    assert set(fortune_map(for_date=AHEAD)) == {pk for digest in outcomes["ok"] for pk in by_hash[digest]}
    assert report.lines_failed == len(outcomes["batch_expired"])
    assert OpenAIBatch.objects.get().remote_status == "expired"


def test_a_download_failing_once_is_retried_on_the_next_poll(users, openai_settings):
    stub = openai_settings
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    stub.batch_configure(download_failures=1)
    first = openai_batch_collect()
    assert (first.download_failures, first.collected, first.stored_users) == (1, 0, 0)
    row = OpenAIBatch.objects.get()
    assert (row.state, row.download_failures) == ("submitted", 1) and "download failed" in row.last_error
    second = openai_batch_collect()
    assert (second.collected, second.stored_users) == (1, len(users))
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()


@pytest.mark.parametrize("point", ["uploaded", "created"])
def test_killed_between_upload_and_create_is_resumed_and_no_batch_is_created_twice(users, openai_settings, point,
                                                                                   kill_at):
    stub = openai_settings
    kill_at(point)
    with pytest.raises(Killed):
        openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    row = OpenAIBatch.objects.get()
    assert row.state == ("planned" if point == "uploaded" else "uploaded")

    again = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    assert again.requests == 0 and again.already_submitted == len(users)  # resumed, not planned again
    row.refresh_from_db()
    assert row.state == "submitted" and row.batch_id
    assert stub.batch_state()["counters"]["batches_created"] == 1
    assert stub.batch_state()["counters"]["files_created"] == 1
    openai_batch_collect()
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()


def test_an_uploaded_file_resumed_too_late_is_deleted_and_left_to_the_synchronous_pass(users, openai_settings, kill_at):
    stub = openai_settings
    kill_at("created")
    with pytest.raises(Killed):
        openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    # The created batch is found by its metadata, so take that case away: kill before the create.
    stub.reset()
    OpenAIBatch.objects.all().delete()
    kill_at("uploaded")
    with pytest.raises(Killed):
        openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    report = openai_batch_collect(base_date=NIGHT_2)  # night 2: AHEAD is due tonight
    assert (report.polled, report.stored_users) == (0, 0)
    row = OpenAIBatch.objects.get()
    assert (row.state, row.last_error) == ("discarded", openai_batch.DISCARDED_TOO_LATE.format(target_date=AHEAD))
    counters = stub.batch_state()["counters"]
    assert counters.get("batches_created", 0) == 0 and counters["files_deleted"] == 1
    assert _sync_night_2(openai_settings) == len(_hash_users(users))


def test_killed_mid_collect_resumes_without_duplicates(users, openai_settings, kill_at):
    by_hash = _hash_users(users)
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    kill_at("stored_page")
    with pytest.raises(Killed):
        openai_batch_collect(page_size=5)
    partial = fortune_map(for_date=AHEAD)
    assert 0 < len(partial) < len(users)
    assert OpenAIBatch.objects.get().state == "submitted"

    report = openai_batch_collect(page_size=5)
    results = fortune_map(for_date=AHEAD)
    assert set(results) == eligible_ids()
    assert {pk: results[pk] for pk in partial} == partial  # what was stored stays as it was
    assert FortuneGeneration.objects.filter(for_date=AHEAD).count() == len(by_hash)
    assert FortuneResult.objects.filter(for_date=AHEAD).count() == len(users)
    assert report.stored_users == len(users) - len(partial)
    assert openai_batch_collect().polled == 0  # collected: never stored again


def test_killed_after_download_before_storing_resumes(users, openai_settings, kill_at):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    kill_at("downloaded")
    with pytest.raises(Killed):
        openai_batch_collect()
    assert fortune_map(for_date=AHEAD) == {}
    assert openai_batch_collect().stored_users == len(users)


def test_a_user_who_changed_birth_data_after_submission_gets_the_new_inputs_fortune(users, openai_settings):
    twins = [u for u in users if u.birth_date_solar == dt.date(1979, 4, 4)]
    old = _input(twins[0]).hash
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    mover = twins[0]
    mover.birth_date_solar = dt.date(1988, 8, 8)
    mover.save()
    new = _input(mover).hash
    assert new != old

    openai_batch_collect()
    results = fortune_map(for_date=AHEAD)
    assert mover.pk not in results  # not the old input's fortune
    old_generation = FortuneGeneration.objects.get(input_hash=old)
    assert {results[t.pk] for t in twins[1:]} == {old_generation.pk}  # the others keep the shared one

    assert _sync_night_2(openai_settings) == 1
    assert FortuneResult.objects.get(user=mover, for_date=AHEAD).generation.input_hash == new


def test_a_generation_stored_by_another_path_is_kept(users, openai_settings):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    _sync_night_2(openai_settings)  # everything stored synchronously before the batch was collected
    before = {g.input_hash: (g.pk, g.content) for g in FortuneGeneration.objects.filter(for_date=AHEAD)}
    results = fortune_map(for_date=AHEAD)
    report = openai_batch_collect()
    assert (report.stored_users, report.stored_generations, report.collected) == (0, 0, 1)
    assert (report.lines_ok, report.lines_orphaned) == (0, len(before))  # nobody needed them any more
    assert {g.input_hash: (g.pk, g.content) for g in FortuneGeneration.objects.filter(for_date=AHEAD)} == before
    assert fortune_map(for_date=AHEAD) == results


def test_requests_are_split_under_the_file_limits_one_model_per_file(users, openai_settings):
    stub = openai_settings
    by_hash = _hash_users(users)
    report = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE, max_requests=4, page_size=7)
    assert [count for count, _ in report.files] == [4] * (len(by_hash) // 4) + (
        [len(by_hash) % 4] if len(by_hash) % 4 else [])
    rows = OpenAIBatch.objects.order_by("pk")
    assert sorted(h for row in rows for h in row.input_hashes) == sorted(by_hash)  # each input exactly once
    assert {b["status"] for b in stub.batch_state()["batches"]} == {"completed"}  # no mixed-model failure

    biggest = max(size for _, size in report.files)
    OpenAIBatch.objects.all().delete()
    FortuneResult.objects.all().delete()
    small = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE, max_bytes=biggest // 2)
    assert all(size <= biggest // 2 for _, size in small.files) and len(small.files) > 1


def test_a_second_submission_sends_nothing_already_in_flight(users, openai_settings):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    again = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    assert (again.requests, again.batches_created, again.already_submitted) == (0, 0, len(users))
    assert openai_settings.batch_state()["counters"]["batches_created"] == 1


def test_inputs_already_stored_are_not_submitted(users, openai_settings):
    run_batch("--date", NIGHT_2.isoformat(), "--workers", "2", "--retry-cooldown", "0", "--user", str(users[0].pk))
    report = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    # users[0] has a fortune (not planned at all); nobody else shares its input in this seed
    assert report.users == len(users) - 1
    assert _input(users[0]).hash not in OpenAIBatch.objects.get().input_hashes


def test_dry_run_reports_files_and_cost_each_way_and_writes_nothing(users, openai_settings):
    before = table_counts()
    report = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE, dry_run=True, max_requests=10)
    by_hash = _hash_users(users)
    assert (report.users, report.requests) == (len(users), len(by_hash))
    assert [count for count, _ in report.files] == [10] * (len(by_hash) // 10) + [len(by_hash) % 10]
    assert report.cost_batch > 0 and abs(report.cost_batch * 2 - report.cost_standard) <= Decimal("0.000001")
    assert table_counts() == before
    assert openai_settings.batch_state()["counters"] == {}
    summary = openai_batch_submit_summary(report=report)
    assert summary.startswith(f"batch api dry run {AHEAD}: {len(users)} users, {len(by_hash)} requests")
    assert f"~${report.cost_batch} on the Batch API vs ~${report.cost_standard} standard" in summary


def test_the_admin_lists_batches(users, openai_settings, client):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    admin = user_create(username="admin", is_staff=True, is_superuser=True, password="pw")
    client.force_login(admin)
    row = OpenAIBatch.objects.get()
    listing = client.get("/admin/core/openaibatch/")
    assert listing.status_code == 200 and row.batch_id in listing.content.decode()
    assert client.get(f"/admin/core/openaibatch/{row.pk}/change/").status_code == 200


def test_an_upload_error_stops_the_submission_and_is_recorded(users, openai_settings, settings):
    settings.OPENAI_BASE_URL = openai_settings.base_url.replace("/v1", "/nowhere")
    report = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    assert report.error.startswith("upload failed: NotFoundError")
    row = OpenAIBatch.objects.get()
    assert (row.state, row.last_error) == ("planned", report.error)
    assert "stopped: upload failed" in openai_batch_submit_summary(report=report)

    settings.OPENAI_BASE_URL = openai_settings.base_url
    again = openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)  # the unconfirmed upload is discarded
    row.refresh_from_db()
    assert (row.state, row.last_error) == ("discarded", openai_batch.DISCARDED_UNCONFIRMED)
    assert (again.users, again.batches_created) == (len(users), 1)


def test_the_batch_api_needs_the_openai_provider(settings):
    settings.FORTUNE_PROVIDER = "local"
    with pytest.raises(ProviderConfigError) as caught:
        openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    assert str(caught.value) == BATCH_API_NEEDS_OPENAI.format(provider="local")


def test_the_upload_is_a_jsonl_file_named_for_its_key(users, openai_settings):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    row = OpenAIBatch.objects.get()
    client = openai.OpenAI(api_key="sk-test-stub", base_url=openai_settings.base_url, max_retries=0)
    [upload] = [f for f in client.files.list(purpose="batch")]
    data = client.files.content(upload.id).content
    client.close()
    assert upload.filename == openai_batch.FILENAME.format(key=row.metadata_key)
    assert (len(data), hashlib.sha256(data).hexdigest()) == (row.file_bytes, row.file_sha256)
    assert io.BytesIO(data).read().count(b"\n") == row.request_count


def test_users_still_missing_get_the_generation_another_path_stored_for_their_input(users, openai_settings):
    twins = [u for u in users if u.birth_date_solar == dt.date(1979, 4, 4)]
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    nightly_fortunes(options=NightlyOptions(base_date=NIGHT_2, workers=1, retry_cooldown=0, user_id=twins[0].pk),
                  hooks=NightHooks())  # the synchronous pass for one user, the batch not collected yet
    kept = FortuneGeneration.objects.get(input_hash=_input(twins[0]).hash)
    report = openai_batch_collect()
    results = fortune_map(for_date=AHEAD)
    assert {results[t.pk] for t in twins} == {kept.pk}
    assert FortuneGeneration.objects.get(pk=kept.pk).content == kept.content
    assert (report.lines_ok, report.stored_users) == (len(_hash_users(users)), len(users) - 1)


def test_two_nights_in_order_collect_cancel_sync_then_submit_the_next(users, openai_settings):
    """Night of B: sync B+1, submit B+2. Night of B+1: settle B+2 (collect, cancel the open rest),
    sync B+2 (only what is missing), submit B+3."""
    stub = openai_settings
    run_batch("--date", BASE.isoformat(), "--workers", "2", "--retry-cooldown", "0")
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    after_night_1 = stub.counters()["by_path"]["/v1/chat/completions"]

    settled = openai_batch_settle(target_date=AHEAD, base_date=NIGHT_2, wait_seconds=5, poll_seconds=0.1)
    assert (settled.cancel_requested, settled.collect.stored_users) == (0, len(users))
    assert _sync_night_2(openai_settings) == after_night_1  # 0 synchronous requests on night 2
    nxt = openai_batch_submit_ahead(target_date=AHEAD + dt.timedelta(days=1), base_date=NIGHT_2)
    assert (nxt.users, nxt.batches_created) == (len(users), 1)
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()


def test_settle_cancels_what_is_still_open_after_collecting_the_rest(users, openai_settings):
    stub = openai_settings
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE, max_requests=13)  # two batches
    stub.batch_configure(stuck=True, partial_share=0.0)
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)  # nothing new: both already in flight
    rows = list(OpenAIBatch.objects.order_by("pk"))
    assert len(rows) == 2
    # A third batch, stuck: users created after night 1's submission.
    late = [user_create(birth_date_solar=dt.date(2001, 1, n + 1), gender="M") for n in range(3)]
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    settled = openai_batch_settle(target_date=AHEAD, base_date=NIGHT_2, wait_seconds=5, poll_seconds=0.1)
    assert settled.cancel_requested == 1 and settled.collect.collected == 3
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids() - {u.pk for u in late}
    assert _sync_night_2(openai_settings) == len(late)


def test_resume_creates_nothing_while_it_cannot_list(users, openai_settings, settings, kill_at):
    kill_at("created")
    with pytest.raises(Killed):
        openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    settings.OPENAI_BASE_URL = openai_settings.base_url.replace("/v1", "/nowhere")
    report = openai_batch.openai_batch_resume(base_date=BASE)
    assert report.error.startswith("listing batches and files failed") and report.created == 0
    assert OpenAIBatch.objects.get().state == "uploaded"
    settings.OPENAI_BASE_URL = openai_settings.base_url
    assert openai_batch.openai_batch_resume(base_date=BASE).adopted == 1
    assert openai_settings.batch_state()["counters"]["batches_created"] == 1


def test_a_batch_that_failed_validation_is_settled_failed_and_left_to_the_synchronous_pass(users, openai_settings):
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)
    row = OpenAIBatch.objects.get()
    client = openai.OpenAI(api_key="sk-test-stub", base_url=openai_settings.base_url, max_retries=0)
    bad = client.files.create(file=("bad.jsonl", io.BytesIO(b"not json\n")), purpose="batch")
    broken = client.batches.create(input_file_id=bad.id, endpoint="/v1/chat/completions", completion_window="24h")
    client.close()
    OpenAIBatch.objects.filter(pk=row.pk).update(batch_id=broken.id)  # as if OpenAI had refused the file
    report = openai_batch_collect()
    row.refresh_from_db()
    assert (report.failed_batches, report.stored_users) == (1, 0)
    assert (row.state, row.failed_lines) == ("failed", row.request_count)
    assert row.last_error.startswith("the batch failed: invalid_json_line")
    assert _sync_night_2(openai_settings) == len(_hash_users(users))


JUNK_LINES = ["[1, 2]", '"a string"', "not json at all", "null",
              '{"id": "batch_req_junk", "response": {"status_code": 200, "body": {}}, "error": null}',
              '{"custom_id": ["not", "a", "string"]}']


def test_damaged_output_lines_fail_their_inputs_or_are_counted_never_the_night(users, openai_settings):
    """An output file with lines that are not objects, lines without custom_id and a line whose
    parts are not objects: the night still completes; the lines that name an input fail it (the
    synchronous pass makes it), the others are counted."""
    stub = openai_settings
    stub.batch_configure(fail_no_custom_id=0.3, junk_lines=[*JUNK_LINES, '{"custom_id": "%s", "response": "x"}'
                                                            % _input(users[0]).hash], seed=5)
    by_hash = _hash_users(users)
    openai_batch_submit_ahead(target_date=AHEAD, base_date=BASE)

    night = nightly_fortunes(options=NightlyOptions(base_date=NIGHT_2, workers=2, retry_cooldown=0))
    no_custom_id = _outcomes(stub)["no_custom_id"]
    assert no_custom_id and len(no_custom_id) < len(by_hash)  # the seed drops some, not all
    [run] = night.runs
    assert run.status == "succeeded"
    assert set(fortune_map(for_date=AHEAD)) == eligible_ids()
    # The damaged lines' inputs, and only those, were made synchronously (the line naming users[0]'s
    # input is a duplicate of a good line in the stub's file, so that input is stored from the good one).
    assert stub.counters()["by_path"]["/v1/chat/completions"] == len(no_custom_id)
    unmatched = len(no_custom_id) + len(JUNK_LINES)
    assert f"{unmatched} damaged lines naming no input" in run.notes
    assert OpenAIBatch.objects.get().state == "collected"

"""The celery executor with tasks run eagerly (in the engine's thread): the engine's planning, dedupe
across pages, retry round and counters over chunks, idempotent chunk re-runs, the chunk rows'
bookkeeping. Real worker processes are in tests/nightly/test_celery_workers.py."""

import datetime as dt
import threading
import time
from unittest import mock

import pytest
from django.db import connection
from django.utils import timezone

from core.models import CeleryChunk, FortuneGeneration, FortuneResult, NightlyRun, User
from core.nightly.executors.celery import worker as worker_module
from core.nightly.executors.celery.broker import celery_backend_check, chunk_task
from core.nightly.executors.celery.chunks import OPEN_STATES, celery_chunk_claim, celery_chunk_counts
from core.nightly.executors.celery.dispatch import CHUNK_ABANDONED
from core.nightly.executors.celery.worker import celery_chunk_generate
from core.nightly.guards import STOP_SIGNAL, StopToken
from core.nightly.lifecycle import nightly_runs_mark_stale
from core.nightly.options import INVALID_CHUNK_SIZE, CeleryBackendUnavailable
from core.resilience import Attempted
from fortuna_api.celery import BROKER_NOT_CONFIGURED
from tests.nightly.celery_helpers import (
    celery_executor,
    celery_run,
    duplicates,
    stored_triples,
    users_with_shared_inputs,
)
from tests.nightly.helpers import TARGET, connections_opened, eligible_ids, run_batch, table_counts

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_celery_backend_stores_what_the_threads_backend_stores(eager):
    users_with_shared_inputs(distinct=23, twins=9)
    run_batch("--date", "2030-03-10", "--workers", "2")
    threads = stored_triples(for_date=TARGET)
    FortuneResult.objects.all().delete()
    FortuneGeneration.objects.all().delete()
    run = celery_run(chunk_size=4, page_size=7)  # twins across pages: dedupe across pages
    assert stored_triples(for_date=TARGET) == threads
    assert {uid for uid, _, _ in threads} == eligible_ids()
    assert run.status == NightlyRun.Status.SUCCEEDED
    assert (run.generated, run.generations, run.failed) == (32, 23, 0)
    assert FortuneGeneration.objects.count() == 23
    assert sum(CeleryChunk.objects.filter(run=run).values_list("inputs", flat=True)) == 23
    assert celery_chunk_counts(run=run) == {"done": 6}


def test_a_rerun_reuses_everything_and_asks_nothing(eager):
    users_with_shared_inputs(distinct=6, twins=2)
    first = celery_run()
    FortuneResult.objects.filter(user_id__in=list(FortuneResult.objects.values_list("user_id", flat=True)[:3])).delete()
    second = celery_run()
    assert second.generations == 0 and second.generated == 3 and second.status == NightlyRun.Status.SUCCEEDED
    assert not CeleryChunk.objects.filter(run=second).exists()
    assert first.generations == FortuneGeneration.objects.count() == 6
    assert duplicates(for_date=TARGET) == 0


def test_a_chunk_run_twice_asks_only_what_is_missing_and_duplicates_nothing(eager):
    users_with_shared_inputs(distinct=8, twins=0)
    run = celery_run(chunk_size=8)
    chunk = CeleryChunk.objects.get(run=run)
    FortuneResult.objects.all().delete()
    kept = FortuneGeneration.objects.order_by("pk").first()
    FortuneGeneration.objects.exclude(pk=kept.pk).delete()
    CeleryChunk.objects.filter(pk=chunk.pk).update(state=CeleryChunk.State.QUEUED)  # a re-delivery
    report = celery_chunk_generate(chunk_id=chunk.pk)
    assert (report.reused_inputs, report.generated_inputs, report.stored_users) == (1, 7, 8)
    assert FortuneResult.objects.count() == 8 and duplicates(for_date=TARGET) == 0


def test_a_chunk_running_elsewhere_with_a_fresh_heartbeat_is_not_claimed(eager):
    users_with_shared_inputs(distinct=3, twins=0)
    run = celery_run(chunk_size=8)
    chunk = CeleryChunk.objects.get(run=run)
    CeleryChunk.objects.filter(pk=chunk.pk).update(state=CeleryChunk.State.RUNNING)  # heartbeat_at: just now
    assert celery_chunk_claim(chunk_id=chunk.pk, worker="other", stale_seconds=60) is False
    assert celery_chunk_generate(chunk_id=chunk.pk).skipped
    assert celery_chunk_claim(chunk_id=chunk.pk, worker="other", stale_seconds=0) is True  # stale: taken over


def test_unplannable_users_are_counted_failed(eager):
    users = users_with_shared_inputs(distinct=4, twins=0)
    type(users[0]).objects.filter(pk=users[0].pk).update(saju_day="")  # pillars that could not be computed
    run = celery_run(force=False)
    assert run.failed >= 1 and run.status == NightlyRun.Status.PARTIAL


def test_chunk_size_is_checked():
    with pytest.raises(ValueError) as error:
        celery_run(chunk_size=0)
    assert str(error.value) == INVALID_CHUNK_SIZE.format(value=0)


def test_broker_not_configured_is_a_clear_error(settings):
    settings.CELERY_BROKER_URL = ""
    before = table_counts()
    with pytest.raises(CeleryBackendUnavailable) as error:
        celery_backend_check()
    assert str(error.value) == BROKER_NOT_CONFIGURED
    assert table_counts() == before


def test_transient_failures_get_one_more_round_after_the_cooldown(eager, openai_settings):
    users_with_shared_inputs(distinct=6, twins=2)
    openai_settings.configure(fault_500=1.0)  # the first round: every attempt fails
    healed = []

    def heal_when_the_first_round_is_over():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            # The first round's two chunks are done, every input failed (recorded in the chunk rows).
            if CeleryChunk.objects.filter(state=CeleryChunk.State.DONE, failed_inputs=3).count() == 2:
                openai_settings.configure(fault_500=0.0)
                healed.append(True)
                break
            time.sleep(0.02)
        connection.close()

    helper = threading.Thread(target=heal_when_the_first_round_is_over)
    helper.start()
    run = celery_run(chunk_size=3, provider_name="openai", max_attempts=1, retry_cooldown=1.0)
    helper.join(timeout=30)
    assert healed
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert (run.generated, run.generations, run.failed, run.llm_requests) == (8, 6, 0, 12)
    assert run.failure_sample == []
    assert "retry round for 6 generations" in run.notes
    assert celery_chunk_counts(run=run) == {"done": 4}  # two first-round chunks, two retry chunks


def test_an_unusable_provider_stops_the_run_instead_of_grinding_through_everyone(eager, openai_settings):
    from core.nightly.guards import STOP_PROVIDER_DOWN

    users_with_shared_inputs(distinct=40, twins=0)
    openai_settings.configure(fail_when_contains=[""], fail_status=429, fail_code="insufficient_quota")
    run = celery_run(chunk_size=10, page_size=10, provider_name="openai", max_attempts=1)
    assert run.status == NightlyRun.Status.FAILED
    assert run.stop_reason == STOP_PROVIDER_DOWN.format(count=10, reason="quota_exhausted")
    assert openai_settings.counters()["requests"] < 40
    assert FortuneGeneration.objects.count() == 0


def test_limits_without_redis_for_the_workers_to_share_are_a_clear_error(settings):
    from core.limiter import LIMITER_NEEDS_REDIS

    settings.CELERY_BROKER_URL, settings.REDIS_URL = "redis://127.0.0.1:6379/9", ""
    with pytest.raises(CeleryBackendUnavailable) as error:
        celery_backend_check(rpm=600)
    assert str(error.value) == LIMITER_NEEDS_REDIS


def test_a_chunk_that_every_worker_dies_on_is_abandoned_not_retried_forever(eager):
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=4)
    chunk = CeleryChunk.objects.get(run=run)
    CeleryChunk.objects.filter(pk=chunk.pk).update(state=CeleryChunk.State.RUNNING, attempts=5, outcomes={},
                                                  heartbeat_at=timezone.now() - dt.timedelta(minutes=5),
                                                  finished_at=None)
    hashes = {row[9] for row in chunk.payload["inputs"]}
    executor = celery_executor(run)
    executor.pending[chunk.pk] = set(hashes)  # as if this executor had sent it
    outcomes = executor.results(timeout=0)
    chunk.refresh_from_db()
    assert chunk.state == CeleryChunk.State.CANCELLED
    assert not CeleryChunk.objects.filter(run=run, state__in=OPEN_STATES).exists()  # nothing left open
    assert CHUNK_ABANDONED.format(index=0, attempts=5) in executor.run.notes
    # Its inputs are reported stopped: neither done nor failed, the next run asks them again.
    assert {digest for digest, _ in outcomes} == hashes and len(outcomes) == 4
    assert all(isinstance(outcome, Attempted) and outcome.stopped for _, outcome in outcomes)


def test_a_workers_generator_threads_never_open_a_database_connection(eager, openai_settings):
    # Connections per worker process follow its chunk slots, not FORTUNE_CELERY_INFLIGHT.
    users_with_shared_inputs(distinct=12, twins=2)
    with connections_opened() as opened_by:
        run = celery_run(chunk_size=4, provider_name="openai")
    assert run.status == NightlyRun.Status.SUCCEEDED and run.generations == 12
    assert not [name for name in opened_by if name.startswith("fortune-celery-")]


def test_a_dead_coordinators_open_chunks_are_cancelled_when_the_next_run_starts(eager):
    users_with_shared_inputs(distinct=4, twins=0)
    run = celery_run(chunk_size=2)
    queued, running = CeleryChunk.objects.filter(run=run).order_by("index")
    CeleryChunk.objects.filter(pk=queued.pk).update(state=CeleryChunk.State.QUEUED)
    CeleryChunk.objects.filter(pk=running.pk).update(state=CeleryChunk.State.RUNNING, worker="w")
    NightlyRun.objects.filter(pk=run.pk).update(status=NightlyRun.Status.RUNNING)  # its coordinator was killed
    assert nightly_runs_mark_stale(target_date=TARGET) == 1
    assert set(CeleryChunk.objects.filter(run=run).values_list("state", flat=True)) == {CeleryChunk.State.CANCELLED}
    assert celery_chunk_generate(chunk_id=queued.pk).skipped  # still in the queue: harmless


def test_invalid_answers_billed_by_the_server_count_in_the_runs_tokens(eager, openai_settings):
    users_with_shared_inputs(distinct=12, twins=0)
    openai_settings.configure(seed=4, faults={"malformed": 0.3, "runaway": 0.1})
    run = celery_run(chunk_size=4, provider_name="openai", retry_cooldown=0)
    counters = openai_settings.counters()
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert counters["by_fault"].get("malformed") and counters["by_fault"].get("runaway")
    assert (run.tokens_in, run.tokens_out) == (counters["tokens_billed"]["in"], counters["tokens_billed"]["out"])


def test_the_runs_heartbeat_records_the_inputs_in_flight_and_a_stop_cancels_the_queued_chunks(eager):
    # No worker ever takes the chunks (their sends vanish): the engine's heartbeat says the inputs are
    # in flight, and the stop cancels the queued chunks, whose inputs are then reported stopped.
    users_with_shared_inputs(distinct=8, twins=0)
    stop, seen = StopToken(), []

    def watch_then_stop():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            seen.extend(NightlyRun.objects.filter(in_flight__gt=0).values_list("in_flight", flat=True))
            time.sleep(0.05)
        stop.request(STOP_SIGNAL.format(signal="SIGTERM"), interrupted=True)
        connection.close()

    watcher = threading.Thread(target=watch_then_stop)
    with mock.patch.object(chunk_task(), "apply_async"):
        watcher.start()
        run = celery_run(chunk_size=4, stop=stop)
    watcher.join(timeout=30)
    assert seen == [8]
    assert run.status == NightlyRun.Status.INTERRUPTED and run.in_flight == 0
    assert (run.generated, run.failed) == (0, 0)
    assert celery_chunk_counts(run=run) == {"cancelled": 2}


def test_a_user_deleted_and_one_edited_before_the_workers_store_are_skipped_counted_and_planned_again(eager):
    users_with_shared_inputs(distinct=12, twins=0)
    real_write = worker_module.nightly_output_write
    touched = {}

    def write_after_two_users_change(*, waiting, **kwargs):
        if not touched and waiting:
            # What DELETE /me and PATCH /me do, between planning and this chunk's store.
            deleted, edited = [user_id for users in waiting.values() for user_id in users][:2]
            User.objects.filter(pk=deleted).delete()
            user = User.objects.get(pk=edited)
            user.birth_date_solar += dt.timedelta(days=1)  # another day pillar: another input
            user.save()
            touched.update(deleted=deleted, edited=edited)
        return real_write(waiting=waiting, **kwargs)

    with mock.patch.object(worker_module, "nightly_output_write", write_after_two_users_change):
        run = celery_run(chunk_size=4)
    assert run.status == NightlyRun.Status.SUCCEEDED, run.stop_reason
    assert {entry["reason"]: entry["user_ids"] for entry in run.failure_sample} == {
        "user_deleted": [touched["deleted"]]}
    assert run.generated == 11 and FortuneResult.objects.filter(for_date=TARGET).count() == 11
    edited = User.objects.get(pk=touched["edited"])
    pillars = FortuneResult.objects.get(user=edited, for_date=TARGET).generation.content["saju"]["pillars"]
    assert pillars["day"] == edited.saju_day  # made from the new birth data, never the old
    assert "planned 1 users again" in run.notes

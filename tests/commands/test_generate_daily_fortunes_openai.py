"""generate_daily_fortunes on the openai provider, through the stub server and the real SDK."""

import datetime as dt
from collections import Counter

import pytest
from django.core.management.base import CommandError

from core.management.commands import generate_daily_fortunes as command
from core.models import FortuneGeneration, NightlyRun, User
from core.nightly.guards import STOP_BUDGET, STOP_DEADLINE
from tests.factories import user_create, users_create_many
from tests.nightly.helpers import BASE, TARGET, connections_opened, eligible_ids, fortune_map, run_batch

pytestmark = pytest.mark.django_db
DATE = BASE.isoformat()
FAST = ("--date", DATE, "--workers", "4", "--retry-cooldown", "0")


def _last_run() -> NightlyRun:
    return NightlyRun.objects.order_by("-pk").first()


def test_identical_inputs_cost_one_request_and_a_rerun_costs_none(openai_settings):
    stub = openai_settings
    users_create_many(count=12, seed=5)
    twins = [user_create(birth_date_solar=dt.date(1979, 4, 4), gender="F") for _ in range(5)]
    run_batch(*FAST)
    results = fortune_map()
    assert set(results) == eligible_ids()
    assert len({results[t.pk] for t in twins}) == 1
    counters = stub.counters()
    distinct = FortuneGeneration.objects.count()
    assert counters["requests"] == distinct == 13
    assert counters["distinct_inputs"] == distinct
    run = _last_run()
    assert (run.status, run.generated, run.generations, run.llm_requests) == ("succeeded", 17, 13, 13)
    assert run.tokens_in > 0 and run.tokens_out > 0 and run.estimated_cost > 0
    assert (run.provider, run.model) == ("openai", openai_settings_model())

    stub.reset(config=False)
    run_batch(*FAST)
    assert stub.counters()["requests"] == 0
    assert fortune_map() == results
    assert _last_run().llm_requests == 0


def openai_settings_model() -> str:
    from django.conf import settings

    return settings.OPENAI_MODEL


def test_a_fault_mix_still_completes_every_user(openai_settings):
    stub = openai_settings
    stub.configure(seed=42, retry_after=0.01, faults={"429": 0.2, "500": 0.1, "malformed": 0.05})
    users_create_many(count=30, seed=11)
    run_batch(*FAST)
    assert set(fortune_map()) == eligible_ids()
    counters = stub.counters()
    run = _last_run()
    assert run.status == "succeeded" and run.failed == 0
    assert counters["by_fault"].get("429", 0) > 0 and counters["by_fault"].get("500", 0) > 0
    assert counters["malformed"] > 0
    assert run.llm_requests == counters["requests"] > run.generations


def _split_by_year(year_pillar: str) -> tuple[list[User], list[User]]:
    users = list(User.objects.all())
    hit = [u for u in users if u.saju_year == year_pillar]
    return hit, [u for u in users if u.saju_year != year_pillar]


@pytest.fixture
def two_cohorts():
    for day in range(1, 6):
        user_create(birth_date_solar=dt.date(1990, 5, day * 3), gender="M")  # 庚午 year
        user_create(birth_date_solar=dt.date(1985, 6, day * 3), gender="F")  # 乙丑 year
    failing, fine = _split_by_year("庚午")
    assert len(failing) == 5 and len(fine) == 5
    return failing, fine


def test_persistent_failure_counts_those_users_failed_and_stores_the_rest(openai_settings, two_cohorts):
    stub = openai_settings
    failing, fine = two_cohorts
    stub.configure(fail_when_contains=["년주: 庚午"], fail_status=500)
    with pytest.raises(CommandError) as err:
        run_batch(*FAST, "--max-attempts", "2")
    assert err.value.returncode == command.EXIT_INCOMPLETE
    assert set(fortune_map()) == {u.pk for u in fine}
    run = _last_run()
    assert (run.status, run.failed, run.generated) == ("partial", 5, 5)
    assert {entry["reason"] for entry in run.failure_sample} == {"server_error"}
    assert sum(entry["count"] for entry in run.failure_sample) == 5
    assert "retry round" in run.notes
    # two attempts in the main round, two more in the end-of-run round, for each failing input
    failed_requests = [r for r in stub.requests() if r["fault"] == "fail_when_contains"]
    assert Counter(Counter(r["sha256"] for r in failed_requests).values()) == {4: 5}


def test_a_non_retryable_error_is_not_retried(openai_settings, two_cohorts):
    stub = openai_settings
    failing, fine = two_cohorts
    stub.configure(fail_when_contains=["년주: 庚午"], fail_status=400)
    with pytest.raises(CommandError):
        run_batch(*FAST)
    assert set(fortune_map()) == {u.pk for u in fine}
    assert stub.counters()["by_status"]["400"] == 5
    run = _last_run()
    assert {entry["reason"] for entry in run.failure_sample} == {"bad_request"}
    assert "retry round" not in run.notes


def test_an_unreachable_provider_fails_fast_and_is_reported(openai_settings, settings):
    settings.OPENAI_BASE_URL = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    users_create_many(count=25, seed=2)
    with pytest.raises(CommandError) as err:
        run_batch(*FAST, "--max-attempts", "2")
    assert err.value.returncode == command.EXIT_INCOMPLETE
    run = _last_run()
    assert run.status == "failed" and run.generated == 0 and run.failed >= 10
    assert run.stop_reason.startswith("provider unusable")
    assert {entry["reason"] for entry in run.failure_sample} == {"connection_error"}
    assert "connection_error" in str(err.value)


def test_the_cost_budget_stops_the_run_as_partial(openai_settings):
    users_create_many(count=8, seed=9)
    with pytest.raises(CommandError) as err:
        run_batch("--date", DATE, "--workers", "1", "--max-cost", "0.000001")
    assert err.value.returncode == command.EXIT_INCOMPLETE
    run = _last_run()
    assert run.status == "partial"
    assert run.stop_reason.startswith(STOP_BUDGET.split("$")[0])
    assert 1 <= run.generated < 8
    assert len(fortune_map()) == run.generated


def test_the_runtime_deadline_stops_the_run_as_partial(openai_settings):
    openai_settings.configure(latency_ms=50)
    users_create_many(count=20, seed=4)
    with pytest.raises(CommandError):
        run_batch("--date", DATE, "--workers", "1", "--max-runtime", "0.002")
    run = _last_run()
    assert run.status in ("partial", "failed")
    assert run.stop_reason == STOP_DEADLINE.format(minutes=0.002)
    assert run.generated < 20
    assert len(fortune_map()) == run.generated


def test_dry_run_sends_no_request_and_estimates_cost(openai_settings):
    users_create_many(count=6, seed=1)
    out = run_batch("--date", DATE, "--dry-run")
    assert openai_settings.counters()["requests"] == 0
    assert "6 distinct generations = LLM requests" in out
    assert NightlyRun.objects.count() == 0
    tokens = out.split("~")[1].split(" ")[0]
    tokens_in, tokens_out = (int(t) for t in tokens.split("/"))
    assert tokens_in > 6 * 500 and tokens_out > 6 * 500
    assert f"{TARGET}" in out


def test_the_widest_pool_of_workers_is_accepted_and_completes(openai_settings):
    users_create_many(count=8, seed=12)
    run_batch("--date", DATE, "--workers", str(command.MAX_WORKERS), "--retry-cooldown", "0")
    run = _last_run()
    assert command.MAX_WORKERS == 512
    assert (run.status, run.workers, run.generations) == ("succeeded", 512, 8)
    assert set(fortune_map()) == eligible_ids()


def test_tpm_keeps_the_threads_backend_under_the_accounts_token_limit(openai_settings):
    # The stub's account: 600,000 TPM over a 2 s window (20,000 tokens a window); --tpm the same.
    openai_settings.configure(latency_ms=20, account_tpm=600_000, account_window_s=2)
    users_create_many(count=24, seed=13)
    run_batch("--date", DATE, "--workers", "16", "--tpm", "600000", "--retry-cooldown", "0")
    account = openai_settings.counters()["account"]
    assert _last_run().status == "succeeded"
    assert account["rejected_429"] == 0
    assert 0 < account["max_tokens_in_window"] <= 600_000 * 2 / 60


def test_the_generator_threads_never_open_a_database_connection(openai_settings):
    # DB connections must not grow with --workers: only the main thread (and the writer) use the ORM.
    users_create_many(count=20, seed=14)
    with connections_opened() as opened_by:
        run_batch("--date", DATE, "--workers", "16", "--retry-cooldown", "0")
    assert _last_run().generations == 20
    assert not [name for name in opened_by if name.startswith("fortune-worker-")]


def test_a_limiter_redis_that_does_not_answer_leaves_the_run_limited_in_process(openai_settings, settings, caplog):
    import socket

    from core.limiter import LIMITER_REDIS_DOWN

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        settings.REDIS_URL = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
    users_create_many(count=6, seed=15)
    with caplog.at_level("WARNING", logger="fortuna.limiter"):
        run_batch(*FAST, "--rpm", "6000")
    assert _last_run().status == "succeeded" and set(fortune_map()) == eligible_ids()
    head = "fortune limiter: " + LIMITER_REDIS_DOWN.split("(")[0]
    down = [r for r in caplog.records if r.getMessage().startswith(head)]
    assert len(down) == 1  # said once, not per call

"""generate_daily_fortunes through call_command on the local provider: coverage, idempotence,
--force, --dry-run, --user-id and every bad input."""

import datetime as dt
import logging

import pytest
from django.core.management.base import CommandError

from core.management.commands import generate_daily_fortunes as command
from core.models import FortuneGeneration, FortuneResult, NightlyRun, User
from core.nightly import scheduler as scheduler_module
from core.nightly import store as store_module
from core.nightly.dates import database_today
from core.nightly.nightly import nightly_fortunes
from core.nightly.options import INVALID_CHUNK_SIZE, MAX_CHUNK_SIZE, NightlyOptions
from core.nightly.plan import USER_INACTIVE, USER_NO_BIRTH_DATE, USER_NOT_FOUND
from tests.factories import user_create, users_create_many
from tests.nightly.helpers import BASE, TARGET, eligible_ids, fortune_map, run_batch, table_counts

pytestmark = pytest.mark.django_db
DATE = BASE.isoformat()


@pytest.fixture
def population():
    users = users_create_many(count=30, seed=7)
    twins = [user_create(birth_date_solar=dt.date(1991, 1, 1), gender="M") for _ in range(4)]
    inactive = user_create(is_active=False)
    no_birth = user_create(birth_date_solar=None)
    return {"users": users + twins, "twins": twins, "inactive": inactive, "no_birth": no_birth}


def test_every_eligible_user_gets_exactly_one_fortune_for_base_plus_one(population):
    out = run_batch("--date", DATE)
    results = fortune_map()
    assert set(results) == eligible_ids() == {u.pk for u in population["users"]}
    assert FortuneResult.objects.exclude(for_date=TARGET).count() == 0
    assert len({results[t.pk] for t in population["twins"]}) == 1  # identical inputs: one generation
    run = NightlyRun.objects.get()
    assert (run.status, run.base_date, run.target_date) == ("succeeded", BASE, TARGET)
    assert (run.eligible, run.already_present, run.generated, run.failed) == (34, 0, 34, 0)
    assert run.generations == FortuneGeneration.objects.count() == len(set(results.values()))
    assert run.finished_at and run.provider == "local"
    assert out.strip().splitlines()[-1].startswith(f"nightly run {TARGET}: succeeded")
    content = FortuneResult.objects.select_related("generation").first().content
    assert content["for_date"] == TARGET.isoformat()


def test_rerun_is_idempotent_and_changes_nothing(population):
    run_batch("--date", DATE)
    before = fortune_map()
    generations = FortuneGeneration.objects.count()
    run_batch("--date", DATE)
    assert fortune_map() == before
    assert FortuneGeneration.objects.count() == generations
    rerun = NightlyRun.objects.order_by("-pk").first()
    assert (rerun.status, rerun.already_present, rerun.generated, rerun.llm_requests) == ("succeeded", 34, 0, 0)


def test_rerun_fills_only_the_gaps(population):
    run_batch("--date", DATE)
    late = user_create(birth_date_solar=dt.date(2001, 2, 3))
    FortuneResult.objects.filter(user=population["users"][0]).delete()
    run_batch("--date", DATE)
    rerun = NightlyRun.objects.order_by("-pk").first()
    assert rerun.generated == 2
    assert set(fortune_map()) == eligible_ids() | {late.pk}


def test_force_regenerates_selected_user_only_and_others_keep_the_shared_generation(population):
    run_batch("--date", DATE)
    a, b = population["twins"][:2]
    old = fortune_map()
    run_batch("--date", DATE, "--force", "--user-id", str(a.pk))
    new = fortune_map()
    assert new[a.pk] != old[a.pk]
    new.pop(a.pk)
    assert new == {uid: gid for uid, gid in old.items() if uid != a.pk}
    assert new[b.pk] == old[a.pk]  # the twin keeps the generation they shared
    assert FortuneGeneration.objects.filter(pk=old[a.pk]).exists()
    forced = NightlyRun.objects.order_by("-pk").first()
    assert (forced.forced, forced.user_id_filter, forced.generated, forced.status) == (True, a.pk, 1, "succeeded")


def test_dry_run_writes_nothing_and_reports_counts(population):
    run_batch("--date", DATE, "--user-id", str(population["twins"][0].pk))
    User.objects.filter(pk=population["users"][0].pk).update(saju_day="", natal_version=None)  # stale row
    before = table_counts()
    stale = User.objects.filter(pk=population["users"][0].pk).values("saju_day")[0]
    out = run_batch("--date", DATE, "--dry-run")
    assert table_counts() == before
    assert User.objects.filter(pk=population["users"][0].pk).values("saju_day")[0] == stale
    assert "34 eligible, 1 already present, 33 to generate (3 reuse a stored generation)" in out
    assert "@" not in out  # sample ids, never emails
    assert "sample user ids [" in out


def test_a_dry_run_of_the_celery_backend_plans_without_a_broker(population, settings):
    settings.CELERY_BROKER_URL = ""  # planning asks nothing of the workers
    before = table_counts()
    out = run_batch("--date", DATE, "--dry-run", "--backend", "celery")
    assert table_counts() == before
    assert "34 eligible, 0 already present, 34 to generate" in out


def test_user_id_runs_for_that_user_only(population):
    user = population["users"][3]
    run_batch("--date", DATE, "--user-id", str(user.pk))
    assert set(fortune_map()) == {user.pk}
    assert NightlyRun.objects.get().user_id_filter == user.pk


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--date", "2030-02-30"], command.DATE_INVALID.format(value="2030-02-30")),
        (["--date", "10/03/2030"], command.DATE_INVALID.format(value="10/03/2030")),
        (["--date", "20300310"], command.DATE_INVALID.format(value="20300310")),
        (["--workers", "0"], command.WORKERS_INVALID.format(value=0)),
        (["--workers", "-1"], command.WORKERS_INVALID.format(value=-1)),
        (["--workers", "10000"], command.WORKERS_INVALID.format(value=10000)),
        (["--workers", "five"], command.WORKERS_INVALID.format(value="five")),
        (["--workers", "513"], command.WORKERS_INVALID.format(value=513)),
        (["--tpm", "0"], command.TPM_INVALID.format(value=0)),
        (["--tpm", "many"], command.TPM_INVALID.format(value="many")),
        (["--backend", "cron"], command.BACKEND_INVALID.format(value="cron")),
        (["--chunk-size", "0"], INVALID_CHUNK_SIZE.format(value=0)),
        (["--chunk-size", str(MAX_CHUNK_SIZE + 1)], INVALID_CHUNK_SIZE.format(value=MAX_CHUNK_SIZE + 1)),
        (["--chunk-size", "big"], INVALID_CHUNK_SIZE.format(value="big")),
        (["--max-cost", "nan"], command.COST_INVALID.format(value="nan")),
        (["--retry-cooldown", "-1"], command.COOLDOWN_INVALID.format(value=-1.0)),
        (["--user-id", "me"], command.USER_ID_INVALID.format(value="me")),
        (["--rpm", "0"], command.RPM_INVALID.format(value=0)),
        (["--max-attempts", "0"], command.ATTEMPTS_INVALID.format(value=0)),
        (["--max-attempts", "21"], command.ATTEMPTS_INVALID.format(value=21)),
        (["--max-cost", "-1"], command.COST_INVALID.format(value="-1")),
        (["--max-cost", "lots"], command.COST_INVALID.format(value="lots")),
        (["--max-runtime", "0"], command.RUNTIME_INVALID.format(value=0.0)),
        (["--user-id", "0"], command.USER_ID_INVALID.format(value=0)),
        # Issue 16: values that used to overflow (a traceback, or a timedelta past its range).
        (["--date", "9999-12-31"], command.DATE_OUT_OF_RANGE.format(value="9999-12-31")),
        (["--date", "2101-01-01"], command.DATE_OUT_OF_RANGE.format(value="2101-01-01")),
        (["--date", "1899-12-31"], command.DATE_OUT_OF_RANGE.format(value="1899-12-31")),
        (["--max-runtime", "inf", "--backend", "celery"], command.RUNTIME_INVALID.format(value=float("inf"))),
        (["--max-runtime", "nan", "--backend", "celery"], command.RUNTIME_INVALID.format(value=float("nan"))),
        (["--max-runtime", "1e300", "--backend", "celery"], command.RUNTIME_INVALID.format(value=1e300)),
        (["--max-runtime", "1441"], command.RUNTIME_INVALID.format(value=1441.0)),
        (["--retry-cooldown", "inf"], command.COOLDOWN_INVALID.format(value=float("inf"))),
    ],
)
def test_bad_input_is_refused_with_its_message_and_nothing_written(population, args, message):
    before = table_counts()
    with pytest.raises(CommandError) as err:
        run_batch(*args)
    assert str(err.value) == message
    assert err.value.returncode == command.EXIT_USAGE
    assert table_counts() == before


@pytest.mark.parametrize(
    ("who", "message"),
    [("missing", USER_NOT_FOUND), ("inactive", USER_INACTIVE), ("no_birth", USER_NO_BIRTH_DATE)],
)
def test_user_id_that_cannot_have_a_fortune_says_which(population, who, message):
    user_id = 987_654 if who == "missing" else population[who].pk
    before = table_counts()
    with pytest.raises(CommandError) as err:
        run_batch("--date", DATE, "--user-id", str(user_id))
    assert str(err.value) == message.format(user_id=user_id)
    assert err.value.returncode == command.EXIT_USAGE
    assert table_counts() == before


def test_openai_without_a_key_is_a_clear_error_and_writes_nothing(population, settings):
    settings.FORTUNE_PROVIDER = "openai"
    settings.OPENAI_API_KEY = ""
    before = table_counts()
    with pytest.raises(CommandError) as err:
        run_batch("--date", DATE)
    assert str(err.value).startswith(command.PROVIDER_MISCONFIGURED.format(error=""))
    assert "OPENAI_API_KEY" in str(err.value)
    assert err.value.returncode == command.EXIT_USAGE
    assert table_counts() == before


def test_a_stale_running_row_is_marked_interrupted(population):
    stale = NightlyRun.objects.create(base_date=BASE, target_date=TARGET, pid=1)
    run_batch("--date", DATE)
    stale.refresh_from_db()
    assert stale.status == "interrupted" and stale.finished_at is not None
    assert NightlyRun.objects.exclude(pk=stale.pk).get().status == "succeeded"


def test_users_whose_pillars_are_missing_get_them_refreshed_first(population):
    user = population["users"][0]
    User.objects.filter(pk=user.pk).update(saju_year="", saju_day="", natal_version=None)
    run_batch("--date", DATE)
    assert User.objects.get(pk=user.pk).saju_day == user.saju_day
    assert user.pk in fortune_map()


def _stored(user, for_date: dt.date) -> FortuneResult:
    generation = FortuneGeneration.objects.create(
        input_hash=f"{user.pk:032x}{for_date:%Y%m%d}".ljust(64, "0"), for_date=for_date, content={}, provider="local"
    )
    return FortuneResult.objects.create(user=user, for_date=for_date, generation=generation, source="batch")


def test_old_fortunes_are_pruned_at_the_end_of_a_run_counting_from_the_databases_today(population, settings):
    settings.FORTUNE_RETENTION_DAYS = 30
    today = database_today()
    user = population["no_birth"]
    old, recent = _stored(user, today - dt.timedelta(days=31)), _stored(user, today - dt.timedelta(days=30))
    run_batch("--date", DATE)
    assert not FortuneResult.objects.filter(pk=old.pk).exists()
    assert FortuneResult.objects.filter(pk=recent.pk).exists()
    assert FortuneResult.objects.filter(for_date=TARGET).count() == 34


def test_a_date_far_ahead_prunes_nothing_of_other_dates(population):
    # Issue 16: retention used to count from --date, so a run 120 days ahead deleted every fortune
    # before 30 days ahead, today's and tomorrow's included.
    today = database_today()
    user = population["users"][0]
    kept = [_stored(user, today + dt.timedelta(days=offset)).pk for offset in (-5, 0, 1)]
    far = today + dt.timedelta(days=120)
    run_batch("--date", far.isoformat())
    assert FortuneResult.objects.filter(pk__in=kept).count() == 3
    assert FortuneResult.objects.filter(for_date=far + dt.timedelta(days=1)).count() == 34


def test_the_ends_of_the_supported_range_are_accepted():
    assert run_batch("--date", command.DATE_LAST.isoformat(), "--dry-run")
    assert run_batch("--date", command.DATE_FIRST.isoformat(), "--dry-run")


# --- the writer (core.nightly.store.ResultWriter) ----------------------------------------------------
# transaction=True: on PostgreSQL the run then writes through its writer thread and connection.

@pytest.mark.django_db(transaction=True)
def test_users_asking_for_a_generation_already_handed_to_the_writer_get_it(monkeypatch):
    users = users_create_many(count=5, seed=2)
    twins = [user_create(birth_date_solar=dt.date(1991, 1, 1), gender="M") for _ in range(6)]
    # One user per page and a flush per generation: every twin after the first asks for a
    # generation that is with the writer (or just stored), never for a new one.
    monkeypatch.setattr(scheduler_module, "FLUSH_GENERATIONS", 1)
    (run,) = nightly_fortunes(options=NightlyOptions(base_date=BASE, page_size=1)).runs
    results = fortune_map()
    assert set(results) == {u.pk for u in users + twins}
    assert len({results[t.pk] for t in twins}) == 1
    assert (run.status, run.generated, run.generations) == ("succeeded", 11, FortuneGeneration.objects.count())


@pytest.mark.django_db(transaction=True)
def test_a_failing_write_fails_the_run_cleanly(monkeypatch):
    users_create_many(count=6, seed=4)
    calls = []

    def failing_store(**kwargs):
        calls.append(1)
        raise RuntimeError("database went away")

    monkeypatch.setattr(store_module, "nightly_output_write", failing_store)
    monkeypatch.setattr(scheduler_module, "FLUSH_GENERATIONS", 1)
    with pytest.raises(RuntimeError, match="database went away"):
        nightly_fortunes(options=NightlyOptions(base_date=BASE, page_size=2))
    run = NightlyRun.objects.get()
    assert run.status == "failed" and "database went away" in run.stop_reason
    assert calls and FortuneResult.objects.count() == 0


def test_the_final_progress_line_counts_every_stored_user(population, caplog):
    logger = logging.getLogger("fortuna")  # does not propagate to the root logger caplog listens on
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="fortuna.nightly")
    try:
        run_batch("--date", DATE)
    finally:
        logger.removeHandler(caplog.handler)
    messages = [record.getMessage() for record in caplog.records]
    finals = [m for m in messages if m.startswith("fortune progress") and "final" in m]
    assert finals and "34/34 (100.0%)" in finals[-1] and "0 failed" in finals[-1]


def test_run_reports_reach_slack_and_discord_and_a_failing_webhook_never_fails_the_run(
    population, settings, webhook_receiver
):
    settings.SLACK_WEBHOOK_URL = webhook_receiver.url("/slack")
    settings.DISCORD_WEBHOOK_URL = webhook_receiver.url("/discord")
    webhook_receiver.respond("/slack", 500, 500, 500)  # every attempt fails

    run_batch("--date", DATE)  # raises CommandError on a non-zero exit

    assert NightlyRun.objects.get().status == "succeeded"
    assert len(webhook_receiver.received("/slack")) == 3  # retried briefly, then given up
    (discord,) = webhook_receiver.json("/discord")
    assert discord["embeds"][0]["fields"] and "succeeded" in (discord["content"] + str(discord["embeds"]))

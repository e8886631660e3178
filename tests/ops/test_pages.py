"""The operators' view through Django's test client: permissions, states, numbers, JSON shape."""

import datetime as dt
import re
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from core.fortunes.pricing import PathUsage, cost_by_path
from core.models import FortuneResult, NightlyRun, OpenAIBatch
from core.nightly.plan import nightly_eligible_users
from core.ops.selectors import (
    DATE_INVALID,
    DAYS_INVALID,
    RUN_NOT_FOUND,
    ops_coverage_many,
    ops_history,
)
from core.services.runs import STALE_AFTER
from tests.factories import user_create, users_create_many
from tests.faults.servers import free_port
from tests.ops.helpers import fortunes_create, history_create, run_create

pytestmark = pytest.mark.django_db

PAGES = ["ops:now", "ops:coverage", "ops:history"]


def _today() -> dt.date:
    return timezone.localdate()


def _tomorrow() -> dt.date:
    return _today() + dt.timedelta(days=1)


def _status(client, **params) -> dict:
    response = client.get(reverse("ops:status"), params)
    assert response.status_code == 200, response.content
    return response.json()


# --- permissions -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PAGES)
def test_anonymous_is_sent_to_the_admin_login(client, name):
    url = reverse(name)
    response = client.get(url)
    assert response.status_code == 302
    assert response.url.startswith(reverse("admin:login")) and f"next={url}" in response.url


def test_anonymous_run_page_and_status_are_refused(client):
    run = run_create(target_date=_tomorrow())
    assert client.get(reverse("ops:run", args=[run.pk])).url.startswith(reverse("admin:login"))
    assert client.get(reverse("ops:status")).status_code == 401


@pytest.mark.parametrize("name", PAGES)
def test_a_signed_in_member_who_is_not_staff_gets_403(member_client, name):
    assert member_client.get(reverse(name)).status_code == 403


def test_non_staff_gets_403_on_run_page_and_status(member_client):
    run = run_create(target_date=_tomorrow())
    assert member_client.get(reverse("ops:run", args=[run.pk])).status_code == 403
    assert member_client.get(reverse("ops:status")).status_code == 403


def test_staff_gets_every_page(staff_client):
    run = run_create(target_date=_tomorrow())
    for url in [reverse(name) for name in PAGES] + [reverse("ops:run", args=[run.pk]), reverse("ops:status")]:
        assert staff_client.get(url).status_code == 200, url


def test_status_json_takes_a_staff_token_and_refuses_a_member_token(client, staff_token):
    member = user_create(username="tokened")
    from rest_framework.authtoken.models import Token

    member_token = Token.objects.create(user=member).key
    url = reverse("ops:status")
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {staff_token}").status_code == 200
    assert client.get(url, HTTP_AUTHORIZATION=f"Token {member_token}").status_code == 403
    assert client.get(url, HTTP_AUTHORIZATION="Token not-a-token").status_code == 401


def test_the_admin_index_links_to_ops(staff_client):
    response = staff_client.get(reverse("admin:index"))
    assert response.status_code == 200
    assert f'href="{reverse("ops:now")}"' in response.content.decode()


# --- states --------------------------------------------------------------------------------------

def test_empty_state_when_no_run_ever(staff_client):
    html = staff_client.get(reverse("ops:now")).content.decode()
    assert "No nightly run is running." in html and 'id="no-running" class="empty">' in html
    assert "No nightly run has ever finished." in html
    history = staff_client.get(reverse("ops:history")).content.decode()
    assert "No nightly run in these nights." in history
    data = _status(staff_client)
    assert data["running"] == [] and data["last_finished"] is None
    assert data["health"]["ok"] is False and data["ok"] is False  # never succeeded: the switch trips


def test_a_running_run_shows_live_progress(staff_client):
    now = timezone.now()
    run = run_create(
        target_date=_tomorrow(), status=NightlyRun.Status.RUNNING, eligible=200, already_present=20, generated=60,
        failed=6, llm_requests=30, workers=6, hostname="box-7", pid=999, started_at=now - dt.timedelta(seconds=66),
        heartbeat_at=now - dt.timedelta(seconds=2),
        failure_sample=[{"reason": "timeout", "count": 4, "user_ids": [1]},
                        {"reason": "rate_limited", "count": 2, "user_ids": [2]}],
    )
    [live] = _status(staff_client)["running"]
    total, processed = run.eligible - run.already_present, run.generated + run.failed
    rate = processed / 64
    assert live["id"] == run.pk and live["total"] == total and live["done"] == run.generated
    assert live["percent"] == pytest.approx(100 * processed / total)
    assert live["rate"] == pytest.approx(rate)
    assert live["eta_seconds"] == pytest.approx((total - processed) / rate)
    assert live["failures"] == [{"reason": "timeout", "users": 4}, {"reason": "rate_limited", "users": 2}]
    assert live["workers_text"] == "6 threads on host box-7 (pid 999)"
    assert live["stale"] == "" and live["in_flight"] is None
    html = staff_client.get(reverse("ops:now")).content.decode()
    assert f'data-run-id="{run.pk}"' in html and "6 threads on host box-7 (pid 999)" in html
    assert "timeout 4, rate_limited 2" in html
    assert 'id="no-running" class="empty" hidden' in html


def test_a_running_run_without_heartbeat_is_flagged_stale(staff_client):
    run_create(target_date=_tomorrow(), status=NightlyRun.Status.RUNNING, eligible=10,
               heartbeat_at=timezone.now() - STALE_AFTER - dt.timedelta(seconds=5))
    [live] = _status(staff_client)["running"]
    assert live["stale"].startswith("no heartbeat for")
    assert "its process may have died" in staff_client.get(reverse("ops:now")).content.decode()


def test_a_failed_run_page_groups_reasons_and_links_failed_users(staff_client):
    users = users_create_many(count=3, seed=5)
    run = run_create(
        target_date=_tomorrow(), status=NightlyRun.Status.FAILED, eligible=3, failed=3,
        stop_reason="provider unusable: 10 generations in a row failed (connection)", notes="catch-up: a note",
        failure_sample=[
            {"reason": "connection", "error": "Connection refused", "count": 2, "user_ids": [users[0].pk, users[1].pk]},
            {"reason": "connection", "error": "Connection reset", "count": 1, "user_ids": [users[2].pk]},
        ],
    )
    html = staff_client.get(reverse("ops:run", args=[run.pk])).content.decode()
    assert run.stop_reason in html and "catch-up: a note" in html
    assert re.search(r"<td>connection</td><td class=\"n\">3</td>", html)
    for user in users:
        assert f'href="{reverse("admin:core_user_change", args=[user.pk])}"' in html
    base = (run.target_date - dt.timedelta(days=1)).isoformat()
    assert f"python manage.py generate_daily_fortunes --date {base}</code>" in html
    assert f"python manage.py generate_daily_fortunes --date {base} --user-id {users[0].pk}" in html
    assert "This run recorded no Celery chunks or Batch API batches: it ran 8 threads on host worker-1" in html


def test_a_partial_night_shows_red_with_the_gap_and_the_command(staff_client):
    users = users_create_many(count=5, seed=9)
    fortunes_create(users=users[:3], for_date=_tomorrow())
    run_create(target_date=_tomorrow(), status=NightlyRun.Status.PARTIAL, eligible=5, generated=3, failed=2)
    gap = nightly_eligible_users().count() - 3
    html = staff_client.get(reverse("ops:now")).content.decode()
    tile = re.search(rf'<section class="tile (\w+)" data-coverage="{_tomorrow().isoformat()}">(.*?)</section>',
                     html, re.S)
    assert tile and tile.group(1) == "bad"
    assert f'<strong data-field="gap">{gap}</strong>' in tile.group(2)
    assert f"generate_daily_fortunes --date {_today().isoformat()}" in tile.group(2)
    data = _status(staff_client)
    tomorrow = next(c for c in data["coverage"] if c["label"] == "tomorrow")
    assert tomorrow["gap"] == gap and tomorrow["ok"] is False and data["ok"] is False


def test_run_page_404_names_the_missing_run(staff_client):
    response = staff_client.get(reverse("ops:run", args=[987654]))
    assert response.status_code == 404


def test_run_not_found_message(db):
    from core.ops.selectors import OpsRunNotFound, ops_run_detail

    with pytest.raises(OpsRunNotFound, match=RUN_NOT_FOUND.format(run_id=5)):
        ops_run_detail(run_id=5)


# --- numbers against the database --------------------------------------------------------------

def test_coverage_numbers_match_the_database():
    day = _tomorrow()
    eligible = users_create_many(count=8, seed=3)
    inactive = user_create(is_active=False)
    no_birth = user_create(birth_date_solar=None)
    fortunes_create(users=eligible[:4] + [inactive, no_birth], for_date=day)
    fortunes_create(users=eligible[4:6], for_date=day, source=FortuneResult.Source.ON_DEMAND)
    fortunes_create(users=eligible[6:7], for_date=day, source=FortuneResult.Source.FALLBACK)
    fortunes_create(users=eligible, for_date=day + dt.timedelta(days=1))  # another night: not counted

    [coverage] = ops_coverage_many(dates=[day])
    expected_eligible = set(nightly_eligible_users().values_list("pk", flat=True))
    with_fortune = set(FortuneResult.objects.filter(for_date=day, user__in=expected_eligible)
                       .values_list("user_id", flat=True))
    assert coverage.eligible == len(expected_eligible)
    assert coverage.with_fortune == len(with_fortune)
    assert coverage.gap == len(expected_eligible - with_fortune)
    assert coverage.on_demand == FortuneResult.objects.filter(for_date=day, source="on_demand").count() == 2
    assert coverage.fallback == FortuneResult.objects.filter(for_date=day, source="fallback").count() == 1
    assert coverage.label == "tomorrow" and not coverage.ok
    assert coverage.command == f"python manage.py generate_daily_fortunes --date {_today().isoformat()}"


def test_coverage_page_takes_a_chosen_date_and_explains_a_bad_one(staff_client):
    chosen = _today() - dt.timedelta(days=3)
    html = staff_client.get(reverse("ops:coverage"), {"date": chosen.isoformat()}).content.decode()
    assert f'data-coverage="{chosen.isoformat()}"' in html
    assert f"--date {(chosen - dt.timedelta(days=1)).isoformat()}" in html
    bad = staff_client.get(reverse("ops:coverage"), {"date": "2030-02-30"})
    assert bad.status_code == 400
    assert DATE_INVALID.format(value="2030-02-30") in bad.content.decode().replace("&#x27;", "'")
    bad_json = staff_client.get(reverse("ops:status"), {"date": "tomorrow"})
    assert bad_json.status_code == 400 and bad_json.json() == {"detail": DATE_INVALID.format(value="tomorrow")}


def test_history_sums_the_runs_of_each_night(staff_client):
    runs = history_create(nights=5, end=_tomorrow(), eligible=40)
    later = runs[-1].started_at + dt.timedelta(hours=1)
    extra = run_create(target_date=_tomorrow(), status=NightlyRun.Status.SUCCEEDED, eligible=40, generated=2,
                       llm_requests=2, tokens_in=100, tokens_out=200, provider="local", started_at=later,
                       heartbeat_at=later + dt.timedelta(seconds=5))
    fortunes_create(users=users_create_many(count=3, seed=1), for_date=_today(), source="on_demand")
    fortunes_create(users=users_create_many(count=2, seed=2), for_date=_today(), source="fallback")

    history = ops_history(days=30)
    nights = {n.target_date: n for n in history.nights}
    assert len(history.nights) == 30 and history.end == _tomorrow()
    for day, night in nights.items():
        runs = NightlyRun.objects.filter(target_date=day)
        assert night.runs == runs.count()
        assert night.stored == sum(r.generated for r in runs)
        assert night.failed == sum(r.failed for r in runs)
        assert night.estimated_cost == sum(r.estimated_cost for r in runs)
        assert night.on_demand == FortuneResult.objects.filter(for_date=day, source="on_demand").count()
        assert night.fallback == FortuneResult.objects.filter(for_date=day, source="fallback").count()
    assert nights[_today()].fallback == 2
    tomorrow = nights[_tomorrow()]
    assert tomorrow.status == "succeeded" and tomorrow.last_run_id == extra.pk
    # Runs from before the pricing paths were recorded paid the standard tier, whatever their provider.
    assert tomorrow.cost_by_path == {"standard": sum(r.estimated_cost for r in NightlyRun.objects.filter(
        target_date=_tomorrow()))} and history.paths == ["standard"]
    assert nights[_today()].on_demand_share == pytest.approx(100 * 3 / 40)

    html = staff_client.get(reverse("ops:history")).content.decode()
    assert html.count("<svg") == 6
    assert staff_client.get(reverse("ops:history"), {"days": 90}).status_code == 200
    bad = staff_client.get(reverse("ops:history"), {"days": "400"})
    assert bad.status_code == 400
    assert DAYS_INVALID.format(value="400").replace("'", "&#x27;") in bad.content.decode()


# --- the JSON shape ----------------------------------------------------------------------------

RUN_KEYS = {
    "id", "url", "target_date", "base_date", "status", "catch_up", "forced", "user_id_filter", "provider", "model",
    "eligible", "already_present", "total", "done", "failed", "percent", "rate", "eta_seconds", "eta_text",
    "in_flight", "generations", "llm_requests", "tokens_in", "tokens_out", "estimated_cost", "workers",
    "workers_text", "hostname", "pid", "started_at", "heartbeat_at", "finished_at", "duration_seconds",
    "duration_text", "stale", "stop_reason", "failures", "missing", "command", "related", "cost_paths",
}
COVERAGE_KEYS = {"for_date", "label", "eligible", "with_fortune", "gap", "ok", "percent", "on_demand", "fallback",
                 "command"}


def test_status_json_shape(staff_client):
    running = run_create(target_date=_tomorrow(), status=NightlyRun.Status.RUNNING, eligible=3)
    finished = run_create(target_date=_today(), status=NightlyRun.Status.SUCCEEDED, eligible=3, generated=3,
                          started_at=timezone.now() - dt.timedelta(hours=20))
    chosen = _today() - dt.timedelta(days=9)
    data = _status(staff_client, date=chosen.isoformat())
    assert set(data) == {"ok", "generated_at", "health", "running", "last_finished", "coverage", "push"}
    assert set(data["health"]) == {"ok", "problems", "cache"}
    assert set(data["running"][0]) == RUN_KEYS and data["running"][0]["id"] == running.pk
    assert data["running"][0]["url"] == reverse("ops:run", args=[running.pk])
    assert set(data["last_finished"]) == RUN_KEYS and data["last_finished"]["id"] == finished.pk
    assert [c["for_date"] for c in data["coverage"]] == [d.isoformat() for d in (_today(), _tomorrow(), chosen)]
    assert [c["label"] for c in data["coverage"]] == ["today", "tomorrow", ""]
    assert all(set(c) == COVERAGE_KEYS for c in data["coverage"])


def test_batch_api_batches_and_cost_per_path_show_on_now_and_run_pages(staff_client):
    paths = cost_by_path(model="gpt-4o-mini", usage={
        "batch_api": PathUsage(requests=90, tokens_in=90_000, tokens_out=45_000),
        "standard": PathUsage(requests=10, tokens_in=10_000, tokens_out=5_000)})
    run = run_create(target_date=_tomorrow(), eligible=100, generated=10, cost_by_path=paths)
    OpenAIBatch.objects.create(target_date=_tomorrow(), model="gpt-4o-mini", metadata_key="k1", batch_id="batch_one",
                               state="collected", remote_status="completed", request_count=90, stored_users=90)
    OpenAIBatch.objects.create(target_date=_tomorrow(), model="gpt-4o-mini", metadata_key="k2", batch_id="batch_two",
                               state="submitted", remote_status="in_progress", request_count=5)
    OpenAIBatch.objects.create(target_date=_today(), model="gpt-4o-mini", metadata_key="k3", batch_id="batch_other")
    words = (f"batch API 90 req ~${paths['batch_api']['cost']}, flex 0 req ~$0.000000, standard 10 req "
             f"~${paths['standard']['cost']}; saving ~${paths['saving']} against all-standard "
             f"~${paths['standard_equivalent']}")
    summary = f"OpenAI Batch API batches for {_tomorrow()}: 1 collected, 1 submitted"

    page = staff_client.get(reverse("ops:run", args=[run.pk])).content.decode()
    assert words in page
    assert f"OpenAI Batch API batches for {_tomorrow()} (2)" in page
    assert "<td>batch_one</td><td>collected</td><td>completed</td><td>90</td>" in page
    assert "batch_two" in page and "batch_other" not in page  # only the run's target date

    now = staff_client.get(reverse("ops:now")).content.decode()
    assert words in now and summary in now
    last = _status(staff_client)["last_finished"]
    assert last["cost_paths"] == words and last["related"] == [summary]


def test_a_degraded_cache_shows_on_the_now_page_and_in_status_json(staff_client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    settings.CACHES = {"default": {"BACKEND": "fortuna_api.redis_cache.SharedClientRedisCache",
                                   "LOCATION": settings.REDIS_URL,
                                   "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5}}}
    assert _status(staff_client)["health"]["cache"] == "down"
    page = staff_client.get(reverse("ops:now")).content.decode()
    assert 'Cache: <span data-field="cache">down</span>' in page
    settings.REDIS_URL = ""
    assert _status(staff_client)["health"]["cache"] == "not configured"


# --- issue 18: the one run view model, explicit chunk rows, the heartbeat's in-flight, cost per path ----------

def test_in_flight_comes_from_the_runs_heartbeat(staff_client):
    run = run_create(target_date=_tomorrow(), status=NightlyRun.Status.RUNNING, eligible=50, generated=5,
                     in_flight=7, heartbeat_at=timezone.now())
    [live] = _status(staff_client)["running"]
    assert live["id"] == run.pk and live["in_flight"] == 7
    html = staff_client.get(reverse("ops:now")).content.decode()
    assert '<dd data-field="in_flight">7</dd>' in html


def test_the_pages_status_json_and_the_summary_line_read_one_run_view_model(staff_client):
    from core.nightly.summary import RunSummary as BatchSummary
    from core.ops.selectors import ops_recent_runs
    from core.services.runs import RunSummary

    run = run_create(target_date=_tomorrow(), status=NightlyRun.Status.PARTIAL, eligible=30, generated=20, failed=4,
                     failure_sample=[{"reason": "timeout", "count": 4, "user_ids": []}])
    [view] = ops_recent_runs(limit=1)
    assert BatchSummary is RunSummary and isinstance(view, RunSummary)
    assert view == RunSummary.from_run(run)
    last = _status(staff_client)["last_finished"]
    assert (last["done"], last["failed"], last["missing"], last["duration_text"]) == (
        view.done, view.failed, view.missing, view.duration)
    assert f"{view.duration}; failures: timeout 4" in view.line()


def test_celery_chunks_are_listed_by_an_explicit_query_on_the_run_page_and_summed_on_now(staff_client):
    from core.models import CeleryChunk

    run = run_create(target_date=_tomorrow(), status=NightlyRun.Status.RUNNING, eligible=40, workers=2)
    CeleryChunk.objects.create(run=run, index=0, for_date=_tomorrow(), payload={"inputs": []}, inputs=10, users=12,
                              state="done", stored_inputs=10, worker="w1:11")
    CeleryChunk.objects.create(run=run, index=1, for_date=_tomorrow(), payload={"inputs": []}, inputs=10, users=10,
                              state="running", stored_inputs=4, worker="w2:22")
    other = run_create(target_date=_today())
    CeleryChunk.objects.create(run=other, index=0, for_date=_today(), payload={"inputs": []}, state="queued")

    page = staff_client.get(reverse("ops:run", args=[run.pk])).content.decode()
    assert "Celery chunks (2)" in page
    assert "<td>0</td><td>done</td><td>10</td><td>12</td><td>10</td>" in page
    assert "<td>1</td><td>running</td><td>10</td><td>10</td><td>4</td>" in page
    [live] = _status(staff_client)["running"]
    assert live["related"] == ["Celery chunks: 1 done, 1 running; hosts w1:11, w2:22"]


def test_the_cost_chart_is_per_pricing_path_with_the_on_demand_generations(staff_client):
    from core.fortunes.pricing import Tier, cost_estimate
    from core.models import FortuneGeneration

    paths = cost_by_path(model="gpt-4o-mini", usage={
        "batch_api": PathUsage(requests=90, tokens_in=90_000, tokens_out=45_000),
        "flex": PathUsage(requests=5, tokens_in=5_000, tokens_out=2_500),
        "standard": PathUsage(requests=10, tokens_in=10_000, tokens_out=5_000)})
    run_create(target_date=_today(), eligible=100, generated=100, cost_by_path=paths,
               estimated_cost=sum(Decimal(paths[p]["cost"]) for p in ("batch_api", "flex", "standard")))
    users = users_create_many(count=3, seed=4)
    made = FortuneGeneration.objects.create(input_hash="od-1".ljust(64, "0"), for_date=_today(), content={},
                                            provider="openai", model="gpt-4o-mini", tokens_in=1000, tokens_out=600)
    FortuneResult.objects.create(user=users[0], for_date=_today(), generation=made, source="on_demand")
    FortuneResult.objects.create(user=users[1], for_date=_today(), generation=made, source="on_demand")
    # A batch generation an on-demand request reused cost nothing more: it is the run's.
    reused = FortuneGeneration.objects.create(input_hash="od-2".ljust(64, "0"), for_date=_today(), content={},
                                              provider="openai", model="gpt-4o-mini", tokens_in=999, tokens_out=999)
    FortuneResult.objects.create(user=users[2], for_date=_today(), generation=reused, source="batch")
    FortuneResult.objects.create(user=user_create(username="late"), for_date=_today(), generation=reused,
                                 source="on_demand")

    history = ops_history(days=30)
    night = next(n for n in history.nights if n.target_date == _today())
    on_demand = cost_estimate(model="gpt-4o-mini", tier=Tier.STANDARD, tokens_in=1000, tokens_out=600)
    assert night.cost_by_path == {"batch_api": Decimal(paths["batch_api"]["cost"]),
                                  "flex": Decimal(paths["flex"]["cost"]),
                                  "standard": Decimal(paths["standard"]["cost"]), "on_demand": on_demand}
    assert history.paths == ["batch_api", "flex", "standard", "on_demand"]
    assert history.total_cost == night.estimated_cost + on_demand
    html = staff_client.get(reverse("ops:history")).content.decode()
    assert "Estimated cost per path" in html and "pricing paths: batch API, flex, standard, on demand" in html
    for label in ("batch API", "flex", "standard", "on demand"):
        assert f">{label}<" in html  # a legend entry per pricing path, not per provider


def test_the_planner_and_the_coverage_count_the_same_eligible_users():
    from core.models import User

    users_create_many(count=4, seed=8)
    user_create(is_active=False)
    user_create(birth_date_solar=None)
    eligible = set(User.objects.eligible().values_list("pk", flat=True))
    assert set(nightly_eligible_users().values_list("pk", flat=True)) == eligible
    assert ops_coverage_many(dates=[_tomorrow()])[0].eligible == len(eligible)
    assert not User.objects.eligible().filter(is_active=False).exists()
    assert not User.objects.eligible().filter(birth_date_solar__isnull=True).exists()

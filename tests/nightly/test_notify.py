import datetime as dt
import email.utils
import logging
import socket
from decimal import Decimal

import pytest
from django.utils import timezone

from core.fortunes.pricing import PathUsage, cost_by_path
from core.models import NightlyRun
from core.nightly.notify import (
    BACKOFF,
    MAX_ATTEMPTS,
    USER_AGENT,
    discord_payload,
    run_report_send,
    run_report_text,
    slack_payload,
)
from core.nightly.summary import RunSummary, failure_reason_counts
from tests.webhook_receiver import WebhookReceiver

STARTED = dt.datetime(2030, 1, 1, 13, 0, tzinfo=dt.UTC)


def make_run(**overrides) -> NightlyRun:
    fields = dict(
        pk=42,
        base_date=dt.date(2030, 1, 1),
        target_date=dt.date(2030, 1, 2),
        status=NightlyRun.Status.PARTIAL,
        eligible=1200,
        already_present=100,
        generated=1090,
        failed=10,
        llm_requests=640,
        tokens_in=320000,
        tokens_out=256000,
        estimated_cost=Decimal("0.201600"),
        workers=5,
        provider="openai",
        model="gpt-4o-mini",
        started_at=STARTED,
        finished_at=STARTED + dt.timedelta(minutes=3, seconds=25),
        failure_sample=[
            {"user_id": 1, "reason": "rate_limited"},
            {"user_id": 2, "reason": "timeout"},
            {"user_id": 3, "reason": "rate_limited"},
            {"user_id": 4, "reason": "bad_request"},
            {"user_id": 5, "reason": "rate_limited"},
            {"user_id": 6, "reason": "timeout"},
        ],
    )
    fields.update(overrides)
    return NightlyRun(**fields)


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


@pytest.fixture
def receiver():
    with WebhookReceiver() as r:
        yield r



@pytest.fixture
def webhooks(settings, receiver):
    settings.SLACK_WEBHOOK_URL = receiver.url("/slack")
    settings.DISCORD_WEBHOOK_URL = receiver.url("/discord")
    return receiver


def messages(caplog, level=logging.INFO):
    return [r.getMessage() for r in caplog.records if r.levelno >= level and r.name == "fortuna.nightly"]


def test_report_text_has_status_counts_duration_cost_and_top_reasons():
    text = run_report_text(run=make_run())
    assert text.splitlines()[0] == "Fortuna daily fortunes: partial for 2030-01-02"
    for fragment in (
        "Target date: 2030-01-02 (base 2030-01-01)",
        "Eligible: 1,200",
        "Already present: 100",
        "Generated: 1,090",
        "Failed: 10",
        "LLM requests: 640 (tokens 320,000 in / 256,000 out)",
        "Duration: 0:03:25",
        "Estimated cost: $0.2016",
        "Provider: openai:gpt-4o-mini, 5 workers",
        "Top failure reasons: rate_limited ×3, timeout ×2, bad_request ×1",
    ):
        assert fragment in text


def test_top_failure_reasons_accepts_strings_counts_and_mappings():
    assert failure_reason_counts(["timeout", "timeout", "x"]) == [("timeout", 2), ("x", 1)]
    assert failure_reason_counts({"a": 3, "b": 5}) == [("b", 5), ("a", 3)]
    assert failure_reason_counts([{"reason": "a", "count": 7}]) == [("a", 7)]
    assert failure_reason_counts([]) == []


def test_slack_payload_arrives_in_the_incoming_webhook_shape(webhooks, settings):
    settings.DISCORD_WEBHOOK_URL = ""
    run_report_send(run=make_run(), sleep=Sleeps())
    (request,) = webhooks.received()
    assert request.path == "/slack"
    assert request.headers["Content-Type"] == "application/json"
    body = request.json()
    assert set(body) == {"text", "blocks"}
    assert "partial for 2030-01-02" in body["text"]
    header, facts, notes = body["blocks"]
    assert header == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Fortuna daily fortunes: partial for 2030-01-02", "emoji": True},
    }
    assert facts["type"] == "section"
    assert 1 <= len(facts["fields"]) <= 10
    assert all(f["type"] == "mrkdwn" and len(f["text"]) <= 2000 for f in facts["fields"])
    assert {"type": "mrkdwn", "text": "*Failed*\n10"} in facts["fields"]
    assert {"type": "mrkdwn", "text": "*Estimated cost*\n$0.2016"} in facts["fields"]
    assert notes["type"] == "section" and "`rate_limited` ×3" in notes["text"]["text"]


def test_discord_payload_arrives_in_the_execute_webhook_shape(webhooks, settings):
    settings.SLACK_WEBHOOK_URL = ""
    run_report_send(run=make_run(status=NightlyRun.Status.SUCCEEDED, failed=0, failure_sample=[]), sleep=Sleeps())
    (request,) = webhooks.received()
    assert request.path == "/discord"
    body = request.json()
    assert set(body) == {"content", "embeds", "allowed_mentions"}
    assert body["content"] == "Fortuna daily fortunes: succeeded for 2030-01-02"
    assert body["allowed_mentions"] == {"parse": []}
    (embed,) = body["embeds"]
    assert set(embed) == {"title", "description", "color", "fields", "timestamp"}
    assert embed["title"] == body["content"]
    assert embed["color"] == 0x2ECC71
    assert dt.datetime.fromisoformat(embed["timestamp"]) == STARTED + dt.timedelta(minutes=3, seconds=25)
    assert 1 <= len(embed["fields"]) <= 25
    assert all(set(f) == {"name", "value", "inline"} and isinstance(f["inline"], bool) for f in embed["fields"])
    assert {"name": "Generated", "value": "1,090", "inline": True} in embed["fields"]
    assert not any(f["name"] == "Top failure reasons" for f in embed["fields"])


def test_both_webhooks_get_one_report_each(webhooks):
    run_report_send(run=make_run(), sleep=Sleeps())
    assert [r.path for r in webhooks.received()] == ["/slack", "/discord"]
    discord = webhooks.json("/discord")[0]
    assert {"name": "Top failure reasons", "value": "rate_limited ×3\ntimeout ×2\nbad_request ×1", "inline": False} in (
        discord["embeds"][0]["fields"]
    )


def test_nothing_is_sent_without_webhook_urls(settings, receiver):
    settings.SLACK_WEBHOOK_URL = ""
    settings.DISCORD_WEBHOOK_URL = ""
    run_report_send(run=make_run())
    assert receiver.received() == []


def test_a_webhook_answering_500_is_retried_logged_and_never_raises(webhooks, batch_log, settings):
    settings.DISCORD_WEBHOOK_URL = ""
    webhooks.respond("/slack", 500, 500, 500)
    sleeps = Sleeps()
    run_report_send(run=make_run(), sleep=sleeps)
    assert [r.status for r in webhooks.received()] == [500] * MAX_ATTEMPTS
    assert sleeps == [BACKOFF, BACKOFF * 2]
    errors = messages(batch_log, logging.ERROR)
    assert errors == ["fortune run report to slack failed (HTTP 500) after 3 attempts"]
    assert not any(settings.SLACK_WEBHOOK_URL in m for m in messages(batch_log))  # the URL is a secret


def test_a_500_then_200_is_delivered_on_retry(webhooks, batch_log):
    webhooks.respond("/discord", 500)
    sleeps = Sleeps()
    run_report_send(run=make_run(), sleep=sleeps)
    assert [r.status for r in webhooks.received("/discord")] == [500, 200]
    assert webhooks.received("/discord")[0].body == webhooks.received("/discord")[1].body
    assert sleeps == [BACKOFF]
    assert "fortune run report sent to discord (attempt 2)" in messages(batch_log)
    assert messages(batch_log, logging.ERROR) == []


def test_a_failing_slack_webhook_does_not_stop_the_discord_report(webhooks):
    webhooks.respond("/slack", 500, 500, 500)
    run_report_send(run=make_run(), sleep=Sleeps())
    assert [r.status for r in webhooks.received("/discord")] == [200]


def test_429_retry_after_is_honoured_when_short(webhooks, settings):
    settings.SLACK_WEBHOOK_URL = ""
    webhooks.respond("/discord", 429, headers={"Retry-After": "2"})
    sleeps = Sleeps()
    run_report_send(run=make_run(), sleep=sleeps)
    assert [r.status for r in webhooks.received()] == [429, 200]
    assert sleeps == [2.0]


def test_429_with_a_long_retry_after_gives_up_at_once(webhooks, settings, batch_log):
    settings.SLACK_WEBHOOK_URL = ""
    webhooks.respond("/discord", 429, headers={"Retry-After": "600"})
    sleeps = Sleeps()
    run_report_send(run=make_run(), sleep=sleeps)
    assert [r.status for r in webhooks.received()] == [429]
    assert sleeps == []
    assert any("429" in m for m in messages(batch_log, logging.ERROR))


def test_a_4xx_is_not_retried(webhooks, settings, batch_log):
    settings.DISCORD_WEBHOOK_URL = ""
    webhooks.respond("/slack", 404)
    run_report_send(run=make_run(), sleep=Sleeps())
    assert [r.status for r in webhooks.received()] == [404]
    assert messages(batch_log, logging.ERROR) == ["fortune run report to slack rejected: HTTP 404, not retried"]


def test_an_unreachable_webhook_is_logged_and_never_raises(settings, batch_log):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.SLACK_WEBHOOK_URL = f"http://127.0.0.1:{port}/slack"
    settings.DISCORD_WEBHOOK_URL = ""
    sleeps = Sleeps()
    run_report_send(run=make_run(), sleep=sleeps)
    assert len(sleeps) == MAX_ATTEMPTS - 1
    (error,) = messages(batch_log, logging.ERROR)
    assert error.startswith("fortune run report to slack failed (") and error.endswith("after 3 attempts")


def test_a_report_that_cannot_even_be_built_is_logged_not_raised(webhooks, batch_log):
    run_report_send(run=make_run(target_date=None), sleep=Sleeps())
    assert webhooks.received() == []
    assert "fortune run report to slack failed unexpectedly" in messages(batch_log, logging.ERROR)


def test_slack_markup_in_a_stop_reason_is_escaped(webhooks, settings):
    settings.DISCORD_WEBHOOK_URL = ""
    run_report_send(run=make_run(stop_reason="budget <!channel> & more"), sleep=Sleeps())
    body = webhooks.json("/slack")[0]
    assert "<!channel>" not in str(body)
    assert "budget &lt;!channel&gt; &amp; more" in body["blocks"][-1]["text"]["text"]


def test_a_webhook_post_is_json_with_the_reports_user_agent(webhooks, settings):
    settings.DISCORD_WEBHOOK_URL = ""
    run_report_send(run=make_run(), sleep=Sleeps())
    (request,) = webhooks.received("/slack")
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == USER_AGENT
    assert request.json()["text"]


def test_429_retry_after_as_an_http_date_is_honoured(webhooks, settings):
    settings.SLACK_WEBHOOK_URL = ""
    when = email.utils.format_datetime(timezone.now() + dt.timedelta(seconds=3), usegmt=True)
    webhooks.respond("/discord", 429, headers={"Retry-After": when})
    sleeps = Sleeps()
    run_report_send(run=make_run(), sleep=sleeps)
    assert [r.status for r in webhooks.received()] == [429, 200]
    (slept,) = sleeps
    assert 0 < slept <= 3  # the date is whole seconds, so up to a second less than asked


def test_a_5xx_retry_after_is_not_waited_the_backoff_is(webhooks, settings):
    settings.SLACK_WEBHOOK_URL = ""
    webhooks.respond("/discord", 503, headers={"Retry-After": "4"})
    sleeps = Sleeps()
    run_report_send(run=make_run(), sleep=sleeps)
    assert [r.status for r in webhooks.received()] == [503, 200]
    assert sleeps == [BACKOFF]


def test_the_report_shows_the_cost_per_path_and_the_saving_when_the_batch_api_or_flex_was_used():
    paths = cost_by_path(model="gpt-4o-mini", usage={
        "batch_api": PathUsage(requests=600, tokens_in=300_000, tokens_out=240_000),
        "flex": PathUsage(requests=40, tokens_in=20_000, tokens_out=16_000)})
    run = make_run(cost_by_path=paths)
    expected = (f"batch API 600 req ~${paths['batch_api']['cost']}, flex 40 req ~${paths['flex']['cost']}, "
                f"standard 0 req ~$0.000000; saving ~${paths['saving']} against all-standard "
                f"~${paths['standard_equivalent']}")
    assert Decimal(paths["saving"]) > 0
    assert f"Estimated cost: $0.2016 ({expected})" in run_report_text(run=run)
    assert f"({expected})" in RunSummary.from_run(run).line()
    assert expected in str(slack_payload(run=run)) and expected in str(discord_payload(run=run))
    assert "saving" not in run_report_text(run=make_run(cost_by_path=cost_by_path(
        model="gpt-4o-mini", usage={"standard": PathUsage(requests=5, tokens_in=10, tokens_out=10)})))

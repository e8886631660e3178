"""The report every fault night must send: one Slack message per finished run, read off the test's
webhook receiver (tests/webhook_receiver.py) and checked against the run's row.

In-process nights use the `slack_receiver` fixture (tests/faults/conftest.py: settings.SLACK_WEBHOOK_URL
points at it); a night run as a subprocess gets `slack_env(receiver)` in its environment.
"""

from __future__ import annotations

from collections.abc import Iterable

from core.nightly.summary import failure_reason_counts
from tests.webhook_receiver import WebhookReceiver

SLACK_PATH = "/slack"
STOPPED = ("failed", "interrupted")  # a run that ended so must say why


def slack_env(receiver: WebhookReceiver) -> dict[str, str]:
    """The environment that sends a subprocess night's reports to `receiver` (and to no other webhook)."""
    return {"SLACK_WEBHOOK_URL": receiver.url(SLACK_PATH), "DISCORD_WEBHOOK_URL": ""}


def _escaped(text: str) -> str:  # Slack's mrkdwn escaping (core/nightly/notify.py)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _fields(report: dict) -> dict[str, str]:
    """The facts section of a Slack report: {"Status": "succeeded", ...}."""
    fields = next(block["fields"] for block in report["blocks"] if "fields" in block)
    return {name.strip("*"): value for name, value in (field["text"].split("\n", 1) for field in fields)}


def assert_reported(receiver: WebhookReceiver, runs: Iterable) -> None:
    """Every finished run (oldest first; NightlyRun objects or rows with the same attributes) got exactly one
    Slack report, in order, carrying its status, dates and counts, its failure reasons, and for a run
    that stopped (failed/interrupted) its reason."""
    finished = [run for run in runs if run.status != "running"]
    reports = receiver.json(SLACK_PATH)
    assert len(reports) == len(finished), (
        f"{len(finished)} finished runs, {len(reports)} reports: {[r.get('text') for r in reports]}")
    for run, report in zip(finished, reports, strict=True):
        catch_up = " (catch-up)" if run.catch_up else ""
        header = report["blocks"][0]["text"]["text"]
        assert header == f"Fortuna daily fortunes{catch_up}: {run.status} for {run.target_date.isoformat()}", header
        facts = _fields(report)
        assert facts["Status"] == run.status
        assert facts["Target date"] == f"{run.target_date.isoformat()} (base {run.base_date.isoformat()})"
        assert (facts["Eligible"], facts["Generated"], facts["Failed"]) == (
            f"{run.eligible:,}", f"{run.generated:,}", f"{run.failed:,}"), (facts, run)
        notes = "\n".join(block["text"]["text"] for block in report["blocks"][1:] if "text" in block)
        if run.status in STOPPED:
            assert run.stop_reason, f"a {run.status} run without a reason"
        if run.stop_reason:
            assert f"*Stopped:* {_escaped(run.stop_reason)}" in notes, notes
        else:
            assert "*Stopped:*" not in notes, notes
        for reason, count in failure_reason_counts(run.failure_sample)[:5]:
            assert f"`{_escaped(reason)}` ×{count}" in notes, notes

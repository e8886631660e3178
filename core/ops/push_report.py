"""The morning push summary to Slack/Discord, through the run reports' own webhook sender
(core/nightly/notify.webhook_post: its retries, its never-raise, its never-log-the-URL).

Sent once a day, by the first sender run at or after PUSH_REPORT_AT (core.push.sender claims it), and
by every run that fails (FCM refused the credentials: nothing is sent until someone acts)."""

import logging

from django.conf import settings

from core.nightly.notify import webhook_post
from core.push.selectors import PushDay, push_day
from core.push.sender import PushResult

logger = logging.getLogger("fortuna.push")

TITLE = "Fortuna morning push: {status} for {date}"
TOP_REASONS = 5


def push_report_lines(*, day: PushDay, result: PushResult) -> tuple[str, list[tuple[str, str]]]:
    run = result.run
    status = "failed" if run.status == run.Status.FAILED else ("problems" if day.failed or day.unconfirmed else "ok")
    facts = [
        ("Due today", f"{day.due:,}"),
        ("Sent", f"{day.sent:,}"),
        ("Failed", f"{day.failed:,}" + (" (" + ", ".join(f"{r} ×{n}" for r, n in day.failures[:TOP_REASONS]) + ")"
                                        if day.failures else "")),
        ("Unconfirmed (sender died)", f"{day.unconfirmed:,}"),
        ("Still pending", f"{day.pending + day.in_flight:,}"),
        ("Waiting for a fortune", f"{day.waiting_for_fortune:,}"),
        ("Devices deactivated", f"{day.devices_deactivated:,}"),
    ]
    if run.stop_reason:
        facts.append(("Stopped", run.stop_reason))
    return TITLE.format(status=status, date=day.for_date.isoformat()), facts


def push_report_send(*, result: PushResult) -> None:
    """Post the day's summary when this run is the one to report it (or failed). Never raises."""
    if not (result.report_due or result.run.status == result.run.Status.FAILED):
        return
    try:
        title, facts = push_report_lines(day=push_day(for_date=result.run.for_date), result=result)
    except Exception:  # a report must never turn a bad morning into a worse one
        logger.exception("push report: the summary could not be built")
        return
    text = "\n".join([title, *(f"{name}: {value}" for name, value in facts)])
    payloads = (
        ("slack", settings.SLACK_WEBHOOK_URL, {"text": text}),
        ("discord", settings.DISCORD_WEBHOOK_URL, {
            "content": title[:2000],
            "embeds": [{"title": title[:256], "fields": [{"name": n, "value": v[:1024], "inline": True}
                                                          for n, v in facts][:25]}],
            "allowed_mentions": {"parse": []},
        }),
    )
    for service, url, payload in payloads:
        if url:
            webhook_post(service=service, url=url, payload=payload)

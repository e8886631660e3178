"""Run reports to Slack and Discord incoming webhooks. Best effort: never raises, never fails a run.

Formats: Slack incoming webhook `{"text", "blocks"}` (text is the notification fallback; section
text ≤ 3000 chars, ≤ 10 fields of ≤ 2000 chars) — https://api.slack.com/messaging/webhooks ;
Discord execute-webhook `{"content", "embeds"}` (content ≤ 2000, title ≤ 256, description ≤ 4096,
≤ 25 fields, field value ≤ 1024) — https://discord.com/developers/docs/resources/webhook
"""

import json
import logging
import time
from collections.abc import Callable

import httpx2
from django.conf import settings
from django.utils import timezone

from core.fortunes.providers.base import retry_after_seconds
from core.nightly.summary import RunSummary
from core.resilience import RetryPolicy, retrying

logger = logging.getLogger("fortuna.nightly")

TIMEOUT = 5.0
MAX_ATTEMPTS = 3
BACKOFF = 0.5  # seconds, doubled after each failed attempt
MAX_RETRY_AFTER = 5.0  # a webhook asking for longer is not worth holding the run's exit for
TOP_REASONS = 5
USER_AGENT = "fortuna-batch-report/1"

STATUS_EMOJI = {
    "succeeded": ":white_check_mark:",
    "partial": ":warning:",
    "failed": ":x:",
    "interrupted": ":octagonal_sign:",
    "running": ":hourglass_flowing_sand:",
}
STATUS_COLOR = {  # Discord embed colours (decimal RGB)
    "succeeded": 0x2ECC71,
    "partial": 0xE67E22,
    "failed": 0xE74C3C,
    "interrupted": 0x95A5A6,
    "running": 0x3498DB,
}


def _facts(summary: RunSummary) -> list[tuple[str, str]]:
    provider = f"{summary.provider}:{summary.model}" if summary.model else (summary.provider or "?")
    return [
        ("Status", summary.status),
        ("Target date", f"{summary.target_date.isoformat()} (base {summary.base_date.isoformat()})"),
        ("Eligible", f"{summary.eligible:,}"),
        ("Already present", f"{summary.already_present:,}"),
        ("Generated", f"{summary.generated:,}"),
        ("Failed", f"{summary.failed:,}"),
        ("LLM requests", f"{summary.llm_requests:,} (tokens {summary.tokens_in:,} in / {summary.tokens_out:,} out)"),
        ("Duration", summary.duration),
        ("Estimated cost", f"${summary.estimated_cost:.4f}"
                           + (f" ({paths})" if (paths := summary.cost_paths_text()) else "")),
        ("Provider", f"{provider}, {summary.workers} workers"),
    ]


def _title(summary: RunSummary) -> str:
    extra = " (catch-up)" if summary.catch_up else ""
    return f"Fortuna daily fortunes{extra}: {summary.status} for {summary.target_date.isoformat()}"


def _summary_of(run, summary: RunSummary | None) -> RunSummary:
    return summary if summary is not None else RunSummary.from_run(run)


def run_report_text(*, run=None, summary: RunSummary | None = None) -> str:
    """The human summary of a run (or of a night that ended before its run), for both webhooks."""
    summary = _summary_of(run, summary)
    lines = [_title(summary)]
    lines += [f"{name}: {value}" for name, value in _facts(summary)[1:]]
    reasons = summary.reasons[:TOP_REASONS]
    if reasons:
        lines.append("Top failure reasons: " + ", ".join(f"{reason} ×{count}" for reason, count in reasons))
    if summary.stop_reason:
        lines.append(f"Stopped: {summary.stop_reason}")
    return "\n".join(lines)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(*, run=None, summary: RunSummary | None = None) -> dict:
    summary = _summary_of(run, summary)
    facts = _facts(summary)
    blocks: list[dict] = [
        {"type": "header", "text": {"type": "plain_text", "text": _title(summary)[:150], "emoji": True}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{_slack_escape(value)}"[:2000]}
                for name, value in facts[:10]
            ],
        },
    ]
    reasons = summary.reasons[:TOP_REASONS]
    notes = []
    if reasons:
        notes.append("*Top failure reasons:* " + ", ".join(f"`{_slack_escape(r)}` ×{n}" for r, n in reasons))
    if summary.stop_reason:
        notes.append(f"*Stopped:* {_slack_escape(summary.stop_reason)}")
    if notes:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(notes)[:3000]}})
    text = f"{STATUS_EMOJI.get(summary.status, '')} {run_report_text(summary=summary)}".strip()
    return {"text": _slack_escape(text)[:3000], "blocks": blocks}


def discord_payload(*, run=None, summary: RunSummary | None = None) -> dict:
    summary = _summary_of(run, summary)
    fields = [{"name": name, "value": value[:1024], "inline": True} for name, value in _facts(summary)]
    reasons = summary.reasons[:TOP_REASONS]
    if reasons:
        fields.append(
            {"name": "Top failure reasons", "value": "\n".join(f"{r} ×{n}" for r, n in reasons)[:1024], "inline": False}
        )
    description = f"Stopped: {summary.stop_reason}" if summary.stop_reason else f"Run #{summary.pk or '?'}"
    embed = {
        "title": _title(summary)[:256],
        "description": description[:4096],
        "color": STATUS_COLOR.get(summary.status, 0x95A5A6),
        "fields": fields[:25],
        "timestamp": (summary.finished_at or timezone.now()).isoformat(),
    }
    return {
        "content": _title(summary)[:2000],
        "embeds": [embed],
        "allowed_mentions": {"parse": []},  # a stop reason must never ping anyone
    }


class _WebhookFailed(Exception):
    def __init__(self, problem: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


_POLICY = RetryPolicy(
    max_attempts=MAX_ATTEMPTS,
    max_retry_after=MAX_RETRY_AFTER,
    base_delay=BACKOFF,
    max_delay=BACKOFF * 2 ** MAX_ATTEMPTS,
    jitter=False,  # one sender, once a night: nothing to spread apart
)


def _post_once(client: httpx2.Client, *, url: str, body: bytes) -> None:
    try:
        response = client.post(url, content=body)
    except httpx2.TransportError as exc:
        raise _WebhookFailed(f"{type(exc).__name__}: {exc}") from exc
    if response.is_success:
        return
    # Only a 429's Retry-After is a request to wait; a 5xx's is not worth holding the run's exit for.
    retry_after = retry_after_seconds(response.headers) if response.status_code == 429 else None
    raise _WebhookFailed(f"HTTP {response.status_code}", status=response.status_code, retry_after=retry_after)


def webhook_post(
    *, service: str, url: str, payload: dict, sleep: Callable[[float], object] = time.sleep, timeout: float = TIMEOUT
) -> bool:
    """POST payload as JSON; a few attempts on 429/5xx/network errors. True when delivered.

    Never logs the URL: a webhook URL is a secret.
    """
    body = json.dumps(payload, ensure_ascii=False).encode()
    attempts = 0

    def attempt(client: httpx2.Client) -> None:
        nonlocal attempts
        attempts += 1
        _post_once(client, url=url, body=body)

    def on_retry(attempt_number: int, exc: BaseException, delay: float) -> None:
        logger.warning(
            "fortune run report to %s failed (%s), attempt %d/%d, retrying in %.1f s",
            service, getattr(exc, "problem", exc), attempt_number, MAX_ATTEMPTS, delay,
        )

    loop = retrying(
        policy=_POLICY,
        retryable=lambda exc: isinstance(exc, _WebhookFailed) and exc.retryable,
        retry_after=lambda exc: getattr(exc, "retry_after", None),
        sleep=sleep,
        on_retry=on_retry,
    )
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    try:
        with httpx2.Client(timeout=timeout, headers=headers) as client:
            loop(attempt, client)
    except _WebhookFailed as exc:
        if not exc.retryable:
            logger.error("fortune run report to %s rejected: HTTP %d, not retried", service, exc.status)
        elif _POLICY.over_cap(exc.retry_after):
            logger.error(
                "fortune run report to %s: HTTP 429 asking to wait %.0f s, giving up", service, exc.retry_after
            )
        else:
            logger.error("fortune run report to %s failed (%s) after %d attempts", service, exc.problem, attempts)
        return False
    logger.info("fortune run report sent to %s (attempt %d)", service, attempts)
    return True


def run_report_send(
    *, run=None, summary: RunSummary | None = None, sleep: Callable[[float], object] = time.sleep,
    timeout: float = TIMEOUT,
) -> None:
    """Post the run summary (of `run`, or `summary` for a night that ended before its run) to each
    configured webhook. Failures are logged, never raised."""
    try:
        summary = _summary_of(run, summary)
    except Exception:  # a report must never turn a bad night into a worse one
        logger.exception("fortune run report: the summary could not be built")
        return
    targets = (
        ("slack", getattr(settings, "SLACK_WEBHOOK_URL", ""), slack_payload),
        ("discord", getattr(settings, "DISCORD_WEBHOOK_URL", ""), discord_payload),
    )
    for service, url, build in targets:
        if not url:
            continue
        try:
            webhook_post(service=service, url=url, payload=build(summary=summary), sleep=sleep, timeout=timeout)
        except Exception:
            logger.exception("fortune run report to %s failed unexpectedly", service)

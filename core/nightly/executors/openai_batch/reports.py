"""What each Batch API step reports, and the one-line summaries printed and kept in the run's notes."""

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from core.fortunes.pricing import PathUsage


@dataclass
class SubmitReport:
    target_date: dt.date
    dry_run: bool = False
    users: int = 0  # users whose input goes into a batch
    requests: int = 0  # lines = distinct inputs
    already_stored: int = 0  # users whose input already has a stored generation
    already_submitted: int = 0  # users whose input is in an open batch already
    files: list[tuple[int, int]] = field(default_factory=list)  # (requests, bytes) per file
    batches_created: int = 0
    tokens_in: int = 0  # estimates (core.fortunes.prompt.estimate_tokens)
    tokens_out: int = 0
    cost_batch: Decimal = Decimal(0)
    cost_standard: Decimal = Decimal(0)
    model: str = ""
    error: str = ""  # the API error that stopped the submission, if one did


@dataclass
class CollectReport:
    polled: int = 0
    collected: int = 0  # batches whose files were stored this call
    still_open: int = 0
    failed_batches: int = 0
    download_failures: int = 0
    lines_ok: int = 0  # valid lines whose generation is stored (or was already)
    lines_failed: int = 0  # lines left for the synchronous pass
    lines_orphaned: int = 0  # lines no current user needs any more (changed input, already served)
    lines_unmatched: int = 0  # damaged lines naming no custom_id: skipped, their inputs go synchronous
    stored_users: int = 0
    stored_generations: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_batch: Decimal = Decimal(0)
    cost_standard: Decimal = Decimal(0)
    seconds: float = 0.0

    # What two collections of one settle add up (polled is the first's: the second polls the same rows).
    SUMMED = ("collected", "failed_batches", "download_failures", "lines_ok", "lines_failed", "lines_orphaned",
              "lines_unmatched", "stored_users", "stored_generations", "tokens_in", "tokens_out", "cost_batch",
              "cost_standard", "seconds")

    def usage(self) -> PathUsage:
        """The "batch_api" entry of NightlyRun.cost_by_path (core.fortunes.pricing.cost_by_path)."""
        return PathUsage(requests=self.lines_ok + self.lines_failed + self.lines_orphaned + self.lines_unmatched,
                         tokens_in=self.tokens_in, tokens_out=self.tokens_out)


@dataclass
class CancelReport:
    cancel_requested: int = 0
    still_open: int = 0  # not terminal when the wait ended
    collect: CollectReport = field(default_factory=CollectReport)


@dataclass
class ResumeReport:
    adopted: int = 0  # batches found by their metadata key
    created: int = 0
    discarded: int = 0
    error: str = ""  # listing failed: nothing was resumed this time


def openai_batch_submit_summary(*, report: SubmitReport) -> str:
    """One line for stdout and the run report (also what --dry-run prints for the day ahead)."""
    files = ", ".join(f"{count} requests/{size / 1_000_000:.1f} MB" for count, size in report.files) or "none"
    text = (
        f"batch api {'dry run ' if report.dry_run else ''}{report.target_date}: {report.users} users, "
        f"{report.requests} requests ({report.already_stored} users already stored, {report.already_submitted} "
        f"already submitted); files: {files}; {report.batches_created} batches created; "
        f"~{report.tokens_in}/{report.tokens_out} tokens, ~${report.cost_batch} on the Batch API vs "
        f"~${report.cost_standard} standard ({report.model})"
    )
    return text + (f"; stopped: {report.error}" if report.error else "")


def openai_batch_collect_summary(*, report: CollectReport) -> str:
    return (
        f"batch api collect: {report.polled} polled, {report.collected} collected, {report.still_open} open, "
        f"{report.failed_batches} failed; {report.stored_users} users stored from {report.lines_ok} lines "
        f"({report.lines_failed} failed lines left for the synchronous pass, {report.lines_orphaned} unneeded"
        f"{f', {report.lines_unmatched} damaged lines naming no input' if report.lines_unmatched else ''}); "
        f"{report.download_failures} download failures; ~${report.cost_batch} (standard ~${report.cost_standard})"
    )

"""The one summary of a run (stdout, logs and the webhooks all read it) and of a dry run.

A run's summary is core.services.runs.RunSummary, the view model the ops pages and status.json read
too; it is re-exported here for the batch's own modules.
"""

from dataclasses import dataclass, field
from decimal import Decimal

from core.nightly.dates import NightlyTarget
from core.services.runs import RunSummary, cost_paths_text, failure_reason_counts, format_duration

__all__ = ["DryRunReport", "RunSummary", "nightly_run_summary", "cost_paths_text", "failure_reason_counts",
           "format_duration"]


def nightly_run_summary(*, run) -> str:
    return RunSummary.from_run(run).line()


@dataclass
class DryRunReport:
    target: NightlyTarget
    eligible: int = 0
    already_present: int = 0
    to_generate: int = 0  # users
    generations: int = 0  # distinct new generations = LLM requests without retries
    reused: int = 0  # users whose input already has a stored generation
    unplannable: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    estimated_cost: Decimal = Decimal(0)
    sample_user_ids: list[int] = field(default_factory=list)
    provider: str = ""

    def line(self) -> str:
        target = self.target
        return (
            f"nightly dry run {target.target_date}{' (catch-up)' if target.catch_up else ''}: "
            f"{self.eligible} eligible, {self.already_present} already present, {self.to_generate} to generate "
            f"({self.reused} reuse a stored generation), {self.generations} distinct generations = LLM requests, "
            f"~{self.tokens_in}/{self.tokens_out} tokens in/out, ~${self.estimated_cost} with {self.provider}; "
            f"sample user ids {self.sample_user_ids}"
        )

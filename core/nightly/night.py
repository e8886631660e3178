"""What the real night and the dry run share: the night's report, the locks of every date it may touch,
and the price check of every tier it may use."""

import datetime as dt
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from django.conf import settings

from core.fortunes.pricing import PriceUnknown, Tier, price_get
from core.fortunes.providers import Provider, ProviderConfigError
from core.models import NightlyRun
from core.nightly.dates import nightly_lock_dates
from core.nightly.executors.openai_batch import openai_batch_ahead_check
from core.nightly.lock import nightly_lock
from core.nightly.options import NightlyOptions
from core.nightly.summary import DryRunReport, RunSummary


@dataclass
class NightReport:
    runs: list[NightlyRun] = field(default_factory=list)
    plans: list[DryRunReport] = field(default_factory=list)  # dry run only
    lines: list[str] = field(default_factory=list)  # the hooks' (Batch API) and the dry run's day-ahead lines
    pruned: int | None = None  # fortunes pruned; None when pruning was skipped or failed
    # Targets the night never started a run for (stopped or crashed first), each with its reason.
    unrun: list[RunSummary] = field(default_factory=list)

    @property
    def summaries(self) -> list[RunSummary]:
        return [RunSummary.from_run(run) for run in self.runs] + self.unrun

    @property
    def incomplete(self) -> list[RunSummary]:
        return [summary for summary in self.summaries if not summary.succeeded]


@contextmanager
def nightly_locks(*, base_date: dt.date | None, ahead: bool = False) -> Iterator[None]:
    """Every target date this run may touch, locked before any planning (raises NightlyLocked)."""
    with ExitStack() as stack:
        for target_date in nightly_lock_dates(base_date=base_date, ahead=ahead):
            stack.enter_context(nightly_lock(target_date=target_date))
        yield


def prices_check(*, provider: Provider, options: NightlyOptions) -> None:
    """Every tier this night may use has a price (a cost estimate must not crash the run halfway), and
    day-ahead is possible; raises ProviderConfigError saying what to set."""
    openai_batch_ahead_check(options=options)
    if provider.name == "local":
        return  # no tokens, no cost
    tiers = [Tier.STANDARD]
    if settings.OPENAI_SERVICE_TIER == "flex":
        tiers.append(Tier.FLEX)
    if options.ahead:
        tiers.append(Tier.BATCH)
    try:
        for tier in tiers:
            price_get(model=provider.model, tier=tier)
    except PriceUnknown as exc:
        raise ProviderConfigError(str(exc)) from None



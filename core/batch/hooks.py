"""Steps around each target of a night (core.batch.nightly calls them; core.batch.batch_ahead has the
Batch API's)."""

from core.batch.dates import BatchTarget
from core.fortunes.providers import Provider
from core.models import BatchRun


class NightHooks:
    """Steps around each target's run; the defaults do nothing."""

    def before_target(self, *, target: BatchTarget, provider: Provider) -> None:
        pass

    def after_target(self, *, target: BatchTarget, provider: Provider, run: BatchRun) -> None:
        pass

    def report_lines(self) -> list[str]:
        """Lines for the night's summary (stdout), besides the runs' own."""
        return []

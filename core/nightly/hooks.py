"""Steps around each target of a night (core.nightly.nightly calls them; the Batch API's are in
core.nightly.executors.openai_batch.hooks)."""

from core.fortunes.providers import Provider
from core.models import NightlyRun
from core.nightly.dates import NightlyTarget


class NightHooks:
    """Steps around each target's run; the defaults do nothing."""

    def before_target(self, *, target: NightlyTarget, provider: Provider) -> None:
        pass

    def after_target(self, *, target: NightlyTarget, provider: Provider, run: NightlyRun) -> None:
        pass

    def report_lines(self) -> list[str]:
        """Lines for the night's summary (stdout), besides the runs' own."""
        return []

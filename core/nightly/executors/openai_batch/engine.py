"""What the Batch API's two engine runs share: guards that never stop on their own, and the writer
of a run that writes no result (the submission)."""

import math

from core.nightly.guards import StopGuards, StopToken
from core.nightly.store import Flush


class BatchGuards(StopGuards):
    """No deadline and no budget (a submission or a collection is bounded by its plan), and a failed
    line is that line's: the same invalid answer on every line must not stop storing the others."""

    def __init__(self, *, stop: StopToken | None = None) -> None:
        super().__init__(stop=stop or StopToken(), deadline=math.inf, max_runtime_minutes=0)

    def failed(self, *, reason: str, error=None) -> None:
        pass


class NoWriter:
    """The submission's writer: it writes nothing. Users whose input is stored already get their
    result row on their night (the synchronous pass links them), not a day ahead."""

    outstanding = 0

    def submit(self, flush: Flush) -> None:
        pass

    def done(self, *, wait: bool = False) -> list[Flush]:
        return []

    def close(self) -> None:
        pass

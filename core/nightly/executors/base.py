"""What every executor is: see core.nightly.outcomes, where the protocol and its outcomes live.

They live outside this package because the engine (core.nightly.scheduler) needs them and some
executors need the engine (the OpenAI Batch API's submission and collection drive a Scheduler):
with the protocol here, core.nightly.executors and core.nightly.scheduler would import each other
(the "no import circle" contract in .importlinter). Executors keep importing it from here.
"""

from core.nightly.outcomes import Deferred, Executor, Outcome, Stored

__all__ = ["Deferred", "Executor", "Outcome", "Stored"]

"""The openai_batch executor: day-ahead generation through the OpenAI Batch API, through the one engine.

Submit a target date's inputs a day early, collect what the batches answered, cancel what is still
open before the synchronous pass. The night's logic is the engine's (core.nightly.scheduler): the
submission (submit.py) and the collection (collect.py) each run a Scheduler over the target date's
plan pages, with an executor that only turns an input into a JSONL line (Deferred) or a collected
line into a generation (Attempted). Modules:

    client.py   the SDK client, limits, remote listings, error text
    reports.py  the reports of each step and their one-line summaries
    files.py    the JSONL input file, request lines, parsing the output files
    rows.py     each remote step recorded on its OpenAIBatch row
    engine.py   what the two engine runs share (guards, lookup, the submission's no-op writer)
    submit.py   the submit executor and openai_batch_submit_ahead
    collect.py  the collected-lines executor and openai_batch_collect
    resume.py   openai_batch_resume
    cancel.py   openai_batch_settle, openai_batch_cancel_open
    hooks.py    the nightly run's Batch API steps (night_hooks) and the command's entry points

Every remote step is recorded in an OpenAIBatch row before the next one starts (planned → uploaded →
submitted → collected | failed | discarded), so a process killed anywhere is resumed by
openai_batch_resume() on the next call: a batch is found again by its metadata key before anything is
created, and an uploaded file without a batch is submitted (still a day ahead) or deleted.

Callers hold nightly_lock(target_date) for every target date they touch (openai_batch_open_dates()), and
every step acts only on the rows of the date it was given, so the nightly run and `--collect-batches`
never act on the same rows at once. The date lock, not row locks (select_for_update), because a row
is committed *before* its upload (that is what makes a killed submission resumable), so a row lock
could only be taken after that commit, leaving a window; it would also hold a transaction open
across an upload of up to 200 MB, and SQLite has none. The date lock is held by the night for its
whole length on both databases already.
"""

from core.nightly.executors.openai_batch.cancel import openai_batch_cancel_open, openai_batch_settle
from core.nightly.executors.openai_batch.client import (
    BATCH_API_NEEDS_OPENAI,
    FILENAME,
    MAX_BYTES_PER_FILE,
    MAX_REQUESTS_PER_FILE,
    METADATA_KEY,
    openai_batch_client,
    openai_batch_open_dates,
)
from core.nightly.executors.openai_batch.collect import COLLECT_LINES_PER_PASS, openai_batch_collect
from core.nightly.executors.openai_batch.files import batch_line
from core.nightly.executors.openai_batch.hooks import (
    COLLECT_NOTHING_OPEN,
    COLLECT_SKIPPED_LOCKED,
    OpenAIBatchHooks,
    night_hooks,
    openai_batch_ahead_check,
    openai_batch_ahead_plan,
    openai_batch_collect_due,
)
from core.nightly.executors.openai_batch.reports import (
    CancelReport,
    CollectReport,
    ResumeReport,
    SubmitReport,
    openai_batch_collect_summary,
    openai_batch_submit_summary,
)
from core.nightly.executors.openai_batch.resume import (
    DISCARDED_TOO_LATE,
    DISCARDED_UNCONFIRMED,
    RESUBMIT_MIN_DAYS_AHEAD,
    openai_batch_resume,
)
from core.nightly.executors.openai_batch.submit import openai_batch_submit_ahead

__all__ = [
    "BATCH_API_NEEDS_OPENAI", "COLLECT_LINES_PER_PASS", "COLLECT_NOTHING_OPEN", "COLLECT_SKIPPED_LOCKED",
    "DISCARDED_TOO_LATE", "DISCARDED_UNCONFIRMED", "FILENAME", "MAX_BYTES_PER_FILE", "MAX_REQUESTS_PER_FILE",
    "METADATA_KEY", "RESUBMIT_MIN_DAYS_AHEAD", "CancelReport", "CollectReport", "OpenAIBatchHooks", "ResumeReport",
    "SubmitReport", "batch_line", "night_hooks", "openai_batch_ahead_check", "openai_batch_ahead_plan",
    "openai_batch_cancel_open", "openai_batch_client", "openai_batch_collect", "openai_batch_collect_due",
    "openai_batch_collect_summary", "openai_batch_open_dates", "openai_batch_resume", "openai_batch_settle",
    "openai_batch_submit_ahead", "openai_batch_submit_summary",
]

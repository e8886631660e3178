"""The nightly run: tomorrow's fortune (KST) for every active user with a birth date."""

import argparse
import datetime as dt
import sys
from contextlib import contextmanager

from django.core.management.base import BaseCommand, CommandError

from core.fortunes.providers import ProviderConfigError
from core.management.argtypes import EXIT_USAGE, UsageErrorsMixin, finite_decimal, flag, iso_date
from core.nightly import options as nightly
from core.nightly.executors.openai_batch import openai_batch_collect_due
from core.nightly.lock import NightlyLocked
from core.nightly.nightly import nightly_fortunes
from core.nightly.options import CeleryBackendUnavailable, NightlyOptions
from core.nightly.plan import UserNotEligible
from core.resilience import DatabaseUnavailable
from core.saju.terms import FIRST_YEAR, LAST_YEAR

# Threads that only wait on HTTP; none touches the ORM, so DB connections do not grow with it (issue 9).
MAX_WORKERS = 512
MAX_ATTEMPTS = 20
# The saju engine's solar-term tables (core.saju.terms) chart 1899-2101: every date a run touches
# (base + 1, and base + 2 with --batch-ahead) stays inside them with a day to spare.
DATE_FIRST = dt.date(FIRST_YEAR + 1, 1, 1)
DATE_LAST = dt.date(LAST_YEAR - 1, 12, 29)
# A night that ends after the next night's cron would only be skipped by Railway: a day is the most.
MAX_RUNTIME_MINUTES = 1440
MAX_COOLDOWN_SECONDS = 3600
DATE_INVALID = "--date must be a real calendar date written YYYY-MM-DD, got {value!r}."
DATE_OUT_OF_RANGE = (f"--date must be between {DATE_FIRST} and {DATE_LAST} (the saju calendar's range), "
                     "got {value}.")
WORKERS_INVALID = f"--workers must be between 1 and {MAX_WORKERS}, got {{value}}."
RPM_INVALID = "--rpm must be at least 1 request per minute (leave it out for no limit), got {value}."
TPM_INVALID = "--tpm must be at least 1 token per minute (leave it out for no limit), got {value}."
BACKEND_INVALID = f"--backend must be one of {', '.join(nightly.BACKENDS)}, got {{value!r}}."
ATTEMPTS_INVALID = f"--max-attempts must be between 1 and {MAX_ATTEMPTS}, got {{value}}."
COST_INVALID = "--max-cost must be a number of US dollars, 0 or more (0 = no budget), got {value!r}."
RUNTIME_INVALID = f"--max-runtime must be more than 0 and at most {MAX_RUNTIME_MINUTES} minutes, got {{value}}."
COOLDOWN_INVALID = f"--retry-cooldown must be between 0 and {MAX_COOLDOWN_SECONDS} seconds, got {{value}}."
USER_ID_INVALID = "--user-id must be a positive user id, got {value}."
CANCEL_WAIT_INVALID = "--cancel-wait must be between 0 and 3600 seconds, got {value}."
COLLECT_ALONE = "--collect-batches runs on its own: leave out {flags}."
PROVIDER_MISCONFIGURED = "The fortune provider is misconfigured: {error}"
RUN_NOT_COMPLETE = "Not every eligible user has a fortune: {summary}"
EXIT_INCOMPLETE = 2
EXIT_LOCKED = 3


@contextmanager
def _command_errors():
    """The service's refusals as the command's exit codes."""
    try:
        yield
    except NightlyLocked as exc:
        raise CommandError(str(exc), returncode=EXIT_LOCKED) from None
    except (UserNotEligible, CeleryBackendUnavailable) as exc:  # each message says what to fix
        raise CommandError(str(exc), returncode=EXIT_USAGE) from None
    except ProviderConfigError as exc:
        raise CommandError(PROVIDER_MISCONFIGURED.format(error=exc), returncode=EXIT_USAGE) from None
    except DatabaseUnavailable as exc:  # the run stopped; what it stored stays, a rerun fills the gap
        raise CommandError(str(exc), returncode=EXIT_INCOMPLETE) from None


class Command(UsageErrorsMixin, BaseCommand):
    help = (
        "Generate fortunes for tomorrow (KST) for every active user with a birth date; a missed night is "
        "caught up first. Exit 0 only when every eligible user has one."
    )
    # Skipping the system checks saves start-up time; a second concurrent run must exit within 1 s.
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        add = parser.add_argument
        add("--date", type=flag(DATE_INVALID, iso_date, lambda d: DATE_FIRST <= d <= DATE_LAST,
                                invalid=DATE_OUT_OF_RANGE),
            help="Base date YYYY-MM-DD; fortunes are made for the day after. Default: today in Korea "
                 "(with missed-night catch-up).")
        add("--workers", type=flag(WORKERS_INVALID, int, lambda n: 1 <= n <= MAX_WORKERS), default=5,
            help=f"Concurrent LLM calls, 1..{MAX_WORKERS}.")
        add("--dry-run", action="store_true", help="Report what would be done; write nothing.")
        add("--user-id", type=flag(USER_ID_INVALID, int, lambda n: n >= 1), help="Only this user.")
        add("--force", action="store_true", help="Regenerate even when a fortune exists (only for the selected users).")
        add("--rpm", type=flag(RPM_INVALID, int, lambda n: n >= 1),
            help="Requests per minute across all workers (default OPENAI_RPM).")
        add("--tpm", type=flag(TPM_INVALID, int, lambda n: n >= 1),
            help="Tokens per minute across all workers (default OPENAI_TPM).")
        add("--backend", type=flag(BACKEND_INVALID, str, lambda b: b in nightly.BACKENDS),
            default=nightly.BACKEND_THREADS,
            help="threads: this process calls the model; celery: Celery workers do (needs CELERY_BROKER_URL).")
        add("--chunk-size", type=flag(nightly.INVALID_CHUNK_SIZE, int, lambda n: 1 <= n <= nightly.MAX_CHUNK_SIZE),
            default=nightly.CHUNK_SIZE, help="Inputs per Celery task (--backend celery).")
        add("--max-attempts", type=flag(ATTEMPTS_INVALID, int, lambda n: 1 <= n <= MAX_ATTEMPTS),
            help="HTTP attempts per generation per round (default FORTUNE_MAX_ATTEMPTS).")
        add("--max-cost", type=flag(COST_INVALID, finite_decimal, lambda d: d >= 0, show_raw=True),
            help="Stop at this estimated cost in USD (default FORTUNE_MAX_COST_PER_RUN; 0 = no budget).")
        add("--max-runtime", type=flag(RUNTIME_INVALID, float, lambda m: 0 < m <= MAX_RUNTIME_MINUTES), default=90.0,
            help="Stop after this many minutes.")
        add("--retry-cooldown", type=flag(COOLDOWN_INVALID, float, lambda s: 0 <= s <= MAX_COOLDOWN_SECONDS),
            default=30.0,
            help="Seconds before the final round for transiently failed generations.")
        add("--batch-ahead", action=argparse.BooleanOptionalAction,
            help="Submit the day after tomorrow to the OpenAI Batch API (default FORTUNE_BATCH_AHEAD).")
        add("--cancel-wait", type=flag(CANCEL_WAIT_INVALID, float, lambda s: 0 <= s <= 3600),
            help="Seconds to wait for cancelled batches (default FORTUNE_BATCH_CANCEL_WAIT_SECONDS).")
        add("--collect-batches", action="store_true",
            help="Only collect the open Batch API batches (an hourly cron), then exit.")

    def handle(self, *args, **options) -> None:
        if options["collect_batches"]:
            return self.collect(options)
        batch_options = NightlyOptions(
            base_date=options["date"], workers=options["workers"], user_id=options["user_id"],
            force=options["force"], dry_run=options["dry_run"], rpm=options["rpm"], tpm=options["tpm"],
            backend=options["backend"], chunk_size=options["chunk_size"],
            max_attempts=options["max_attempts"], max_cost=options["max_cost"],
            max_runtime_minutes=options["max_runtime"], retry_cooldown=options["retry_cooldown"],
            progress_stream=sys.stderr, progress_is_tty=sys.stderr.isatty(), batch_ahead=options["batch_ahead"],
            cancel_wait_seconds=options["cancel_wait"],
        )
        with _command_errors():
            night = nightly_fortunes(options=batch_options)
        for line in [plan.line() for plan in night.plans] + night.lines:
            self.stdout.write(line)
        for summary in night.summaries:
            self.stdout.write(self.style.SUCCESS(summary.line()) if summary.succeeded else summary.line())
        if incomplete := night.incomplete:
            raise CommandError(RUN_NOT_COMPLETE.format(summary=incomplete[0].line()), returncode=EXIT_INCOMPLETE)

    def collect(self, options) -> None:
        others = [name for name, key in (("--date", "date"), ("--user-id", "user_id"), ("--dry-run", "dry_run"),
                                         ("--force", "force"), ("--batch-ahead", "batch_ahead")) if options[key]]
        if others:
            raise CommandError(COLLECT_ALONE.format(flags=", ".join(others)), returncode=EXIT_USAGE)
        with _command_errors():
            lines = openai_batch_collect_due()
        self.stdout.write("\n".join(lines))

"""The nightly batch: tomorrow's fortune (KST) for every active user with a birth date."""

import argparse
import datetime as dt
import sys
from decimal import Decimal, InvalidOperation
from functools import partial

from django.core.management.base import BaseCommand, CommandError

from core.batch import options as batch
from core.batch.lock import BatchLocked
from core.batch.nightly import batch_nightly
from core.batch.options import BatchOptions, CeleryBackendUnavailable
from core.batch.plan import UserNotEligible
from core.fortunes.providers import ProviderConfigError

# Threads that only wait on HTTP; none touches the ORM, so DB connections do not grow with it (issue 9).
MAX_WORKERS = 512
MAX_ATTEMPTS = 20
DATE_INVALID = "--date must be a real calendar date written YYYY-MM-DD, got {value!r}."
WORKERS_INVALID = f"--workers must be between 1 and {MAX_WORKERS}, got {{value}}."
RPM_INVALID = "--rpm must be at least 1 request per minute (leave it out for no limit), got {value}."
TPM_INVALID = "--tpm must be at least 1 token per minute (leave it out for no limit), got {value}."
BACKEND_INVALID = f"--backend must be one of {', '.join(batch.BACKENDS)}, got {{value!r}}."
ATTEMPTS_INVALID = f"--max-attempts must be between 1 and {MAX_ATTEMPTS}, got {{value}}."
COST_INVALID = "--max-cost must be a number of US dollars, 0 or more (0 = no budget), got {value!r}."
RUNTIME_INVALID = "--max-runtime must be more than 0 minutes, got {value}."
COOLDOWN_INVALID = "--retry-cooldown must be 0 seconds or more, got {value}."
USER_ID_INVALID = "--user-id must be a positive user id, got {value}."
PROVIDER_MISCONFIGURED = "The fortune provider is misconfigured: {error}"
RUN_NOT_COMPLETE = "Not every eligible user has a fortune: {summary}"
EXIT_USAGE = 1
EXIT_INCOMPLETE = 2
EXIT_LOCKED = 3


def _iso_date(value: str) -> dt.date:
    if len(value) != 10:  # fromisoformat also takes 20300210 and week dates
        raise ValueError(value)
    return dt.date.fromisoformat(value)


def _finite_decimal(value: str) -> Decimal:
    parsed = Decimal(value)
    if not parsed.is_finite():
        raise ValueError(value)
    return parsed


def _flag(message: str, convert, valid=lambda value: True, *, show_raw: bool = False):
    """An argparse type= that converts, checks, and fails with the flag's own message."""
    def parse(value: str):
        try:
            parsed = convert(value)
        except (ValueError, InvalidOperation):
            raise argparse.ArgumentTypeError(message.format(value=value)) from None
        if not valid(parsed):
            raise argparse.ArgumentTypeError(message.format(value=value if show_raw else parsed))
        return parsed
    return parse


def _usage_error(parser: argparse.ArgumentParser, message: str):
    """Bad flags exit with EXIT_USAGE and the flag's own message, as every other usage error does
    (argparse alone would exit 2, which here means an incomplete run, and prefix the message)."""
    error = sys.exc_info()[1]  # argparse calls error() while handling the ArgumentError
    if isinstance(error, argparse.ArgumentError) and isinstance(error.__context__, argparse.ArgumentTypeError):
        message = error.message
    if parser.called_from_command_line:
        parser.exit(EXIT_USAGE, f"CommandError: {message}\n")
    raise CommandError(message, returncode=EXIT_USAGE)


class Command(BaseCommand):
    help = (
        "Generate fortunes for tomorrow (KST) for every active user with a birth date; a missed night is "
        "caught up first. Exit 0 only when every eligible user has one."
    )
    # Skipping the system checks saves start-up time; a second concurrent run must exit within 1 s.
    requires_system_checks = []

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.error = partial(_usage_error, parser)
        return parser

    def add_arguments(self, parser) -> None:
        add = parser.add_argument
        add("--date", type=_flag(DATE_INVALID, _iso_date),
            help="Base date YYYY-MM-DD; fortunes are made for the day after. Default: today in Korea "
                 "(with missed-night catch-up).")
        add("--workers", type=_flag(WORKERS_INVALID, int, lambda n: 1 <= n <= MAX_WORKERS), default=5,
            help=f"Concurrent LLM calls, 1..{MAX_WORKERS}.")
        add("--dry-run", action="store_true", help="Report what would be done; write nothing.")
        add("--user-id", type=_flag(USER_ID_INVALID, int, lambda n: n >= 1), help="Only this user.")
        add("--force", action="store_true", help="Regenerate even when a fortune exists (only for the selected users).")
        add("--rpm", type=_flag(RPM_INVALID, int, lambda n: n >= 1),
            help="Requests per minute across all workers (default OPENAI_RPM).")
        add("--tpm", type=_flag(TPM_INVALID, int, lambda n: n >= 1),
            help="Tokens per minute across all workers (default OPENAI_TPM).")
        add("--backend", type=_flag(BACKEND_INVALID, str, lambda b: b in batch.BACKENDS), default=batch.BACKEND_THREADS,
            help="threads: this process calls the model; celery: Celery workers do (needs CELERY_BROKER_URL).")
        add("--chunk-size", type=_flag(batch.INVALID_CHUNK_SIZE, int, lambda n: 1 <= n <= batch.MAX_CHUNK_SIZE),
            default=batch.CHUNK_SIZE, help="Inputs per Celery task (--backend celery).")
        add("--max-attempts", type=_flag(ATTEMPTS_INVALID, int, lambda n: 1 <= n <= MAX_ATTEMPTS),
            help="HTTP attempts per generation per round (default FORTUNE_MAX_ATTEMPTS).")
        add("--max-cost", type=_flag(COST_INVALID, _finite_decimal, lambda d: d >= 0, show_raw=True),
            help="Stop at this estimated cost in USD (default FORTUNE_MAX_COST_PER_RUN; 0 = no budget).")
        add("--max-runtime", type=_flag(RUNTIME_INVALID, float, lambda m: m > 0), default=90.0,
            help="Stop after this many minutes.")
        add("--retry-cooldown", type=_flag(COOLDOWN_INVALID, float, lambda s: s >= 0), default=30.0,
            help="Seconds before the final round for transiently failed generations.")

    def handle(self, *args, **options) -> None:
        batch_options = BatchOptions(
            base_date=options["date"], workers=options["workers"], user_id=options["user_id"],
            force=options["force"], dry_run=options["dry_run"], rpm=options["rpm"], tpm=options["tpm"],
            backend=options["backend"], chunk_size=options["chunk_size"],
            max_attempts=options["max_attempts"], max_cost=options["max_cost"],
            max_runtime_minutes=options["max_runtime"], retry_cooldown=options["retry_cooldown"],
            progress_stream=sys.stderr, progress_is_tty=sys.stderr.isatty(),
        )
        try:
            night = batch_nightly(options=batch_options)
        except BatchLocked as exc:
            raise CommandError(str(exc), returncode=EXIT_LOCKED) from None
        except (UserNotEligible, CeleryBackendUnavailable) as exc:  # each message says what to fix
            raise CommandError(str(exc), returncode=EXIT_USAGE) from None
        except ProviderConfigError as exc:
            raise CommandError(PROVIDER_MISCONFIGURED.format(error=exc), returncode=EXIT_USAGE) from None
        for plan in night.plans:
            self.stdout.write(plan.line())
        for summary in night.summaries:
            self.stdout.write(self.style.SUCCESS(summary.line()) if summary.succeeded else summary.line())
        if incomplete := night.incomplete:
            raise CommandError(RUN_NOT_COMPLETE.format(summary=incomplete[0].line()), returncode=EXIT_INCOMPLETE)

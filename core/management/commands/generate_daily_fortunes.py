"""The nightly batch: tomorrow's fortune (KST) for every active user with a birth date."""

import atexit
import datetime as dt
import gc
import logging
import signal
import sys
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from core.batch.lock import BatchLocked
from core.batch.notify import run_report_send
from core.batch.plan import UserNotEligible
from core.batch.retention import fortunes_prune
from core.batch.run import (
    STOP_SIGNAL,
    BatchOptions,
    StopToken,
    batch_dry_run,
    batch_dry_run_summary,
    batch_generate_daily,
    batch_run_summary,
)
from core.fortunes.providers import ProviderConfigError
from core.models import BatchRun

logger = logging.getLogger("fortuna.batch")

MAX_WORKERS = 64
MAX_ATTEMPTS = 20
DATE_INVALID = "--date must be a real calendar date written YYYY-MM-DD, got {value!r}."
WORKERS_INVALID = f"--workers must be between 1 and {MAX_WORKERS}, got {{value}}."
RPM_INVALID = "--rpm must be at least 1 request per minute (leave it out for no limit), got {value}."
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


def _parse_date(value: str) -> dt.date:
    try:
        if len(value) != 10:  # fromisoformat also takes 20300210 and week dates
            raise ValueError(value)
        return dt.date.fromisoformat(value)
    except ValueError:
        raise CommandError(DATE_INVALID.format(value=value), returncode=EXIT_USAGE) from None


def _connections_close() -> None:
    """No connection may outlive the command: Railway skips a cron run while a process lives. One
    inside an atomic block belongs to a caller (call_command in a test transaction) and stays open."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


def _usage(message: str) -> CommandError:
    return CommandError(message, returncode=EXIT_USAGE)


class Command(BaseCommand):
    help = (
        "Generate fortunes for tomorrow (KST) for every active user with a birth date; a missed night is "
        "caught up first. Exit 0 only when every eligible user has one."
    )
    # Skipping the system checks saves start-up time; a second concurrent run must exit within 1 s.
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        parser.add_argument("--date", help="Base date YYYY-MM-DD; fortunes are made for the day after. "
                                           "Default: today in Korea (with missed-night catch-up).")
        parser.add_argument("--workers", type=int, default=5, help=f"Concurrent LLM calls, 1..{MAX_WORKERS}.")
        parser.add_argument("--dry-run", action="store_true", help="Report what would be done; write nothing.")
        parser.add_argument("--user-id", type=int, help="Only this user.")
        parser.add_argument("--force", action="store_true",
                            help="Regenerate even when a fortune exists (only for the selected users).")
        parser.add_argument("--rpm", type=int, help="Requests per minute across all workers (default OPENAI_RPM).")
        parser.add_argument("--max-attempts", type=int, help="HTTP attempts per generation per round "
                                                             "(default FORTUNE_MAX_ATTEMPTS).")
        parser.add_argument("--max-cost", help="Stop at this estimated cost in USD (default "
                                               "FORTUNE_MAX_COST_PER_RUN; 0 = no budget).")
        parser.add_argument("--max-runtime", type=float, default=90.0, help="Stop after this many minutes.")
        parser.add_argument("--retry-cooldown", type=float, default=30.0,
                            help="Seconds before the final round for transiently failed generations.")

    def _options(self, options: dict) -> BatchOptions:
        base_date = _parse_date(options["date"]) if options["date"] is not None else None
        workers = options["workers"]
        if not 1 <= workers <= MAX_WORKERS:
            raise _usage(WORKERS_INVALID.format(value=workers))
        rpm = options["rpm"]
        if rpm is not None and rpm < 1:
            raise _usage(RPM_INVALID.format(value=rpm))
        attempts = options["max_attempts"]
        if attempts is not None and not 1 <= attempts <= MAX_ATTEMPTS:
            raise _usage(ATTEMPTS_INVALID.format(value=attempts))
        max_cost = None
        if options["max_cost"] is not None:
            try:
                max_cost = Decimal(str(options["max_cost"]))
            except InvalidOperation:
                raise _usage(COST_INVALID.format(value=options["max_cost"])) from None
            if not max_cost.is_finite() or max_cost < 0:
                raise _usage(COST_INVALID.format(value=options["max_cost"]))
        runtime = options["max_runtime"]
        if not runtime > 0:
            raise _usage(RUNTIME_INVALID.format(value=runtime))
        cooldown = options["retry_cooldown"]
        if not cooldown >= 0:
            raise _usage(COOLDOWN_INVALID.format(value=cooldown))
        user_id = options["user_id"]
        if user_id is not None and user_id < 1:
            raise _usage(USER_ID_INVALID.format(value=user_id))
        return BatchOptions(
            base_date=base_date, workers=workers, user_id=user_id, force=options["force"], rpm=rpm,
            max_attempts=attempts, max_cost=max_cost, max_runtime_minutes=runtime, retry_cooldown=cooldown,
            progress_stream=sys.stderr, progress_is_tty=sys.stderr.isatty(),
        )

    def handle(self, *args, **options) -> None:
        batch_options = self._options(options)
        # The process ends with the command: at exit, skip the collector's last pass over every object
        # (about 0.3 s of each run with Django and the openai SDK loaded, freeing nothing that matters).
        atexit.unregister(gc.freeze)
        atexit.register(gc.freeze)
        try:
            if options["dry_run"]:
                for report in batch_dry_run(options=batch_options):
                    self.stdout.write(batch_dry_run_summary(report=report))
                return
            runs = self._run(batch_options)
        except BatchLocked as exc:
            raise CommandError(str(exc), returncode=EXIT_LOCKED) from None
        except UserNotEligible as exc:
            raise _usage(str(exc)) from None
        except ProviderConfigError as exc:
            raise _usage(PROVIDER_MISCONFIGURED.format(error=exc)) from None
        finally:
            _connections_close()
        for run in runs:
            run_report_send(run=run)
        incomplete = [run for run in runs if run.status != BatchRun.Status.SUCCEEDED]
        if runs and batch_options.user_id is None:
            self._prune(today=runs[-1].base_date)
        for run in runs:
            line = batch_run_summary(run=run)
            self.stdout.write(self.style.SUCCESS(line) if run.status == BatchRun.Status.SUCCEEDED else line)
        if incomplete:
            raise CommandError(RUN_NOT_COMPLETE.format(summary=batch_run_summary(run=incomplete[0])),
                               returncode=EXIT_INCOMPLETE)

    @staticmethod
    def _prune(*, today: dt.date) -> None:
        try:
            pruned = fortunes_prune(today=today, retention_days=settings.FORTUNE_RETENTION_DAYS)
        except Exception:  # housekeeping never fails the night's fortunes
            logger.exception("fortune retention: pruning failed")
        else:
            logger.info("fortune retention: pruned %d fortunes older than %d days", pruned,
                        settings.FORTUNE_RETENTION_DAYS)
        finally:
            _connections_close()

    def _run(self, batch_options: BatchOptions) -> list[BatchRun]:
        stop = StopToken()

        def on_signal(signum, frame) -> None:
            stop.request(STOP_SIGNAL.format(signal=signal.Signals(signum).name), interrupted=True)

        previous = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[signum] = signal.signal(signum, on_signal)
            except ValueError:  # not the main thread (e.g. called from a worker): no handlers
                pass
        try:
            return batch_generate_daily(options=batch_options, stop=stop)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

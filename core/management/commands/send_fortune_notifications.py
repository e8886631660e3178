"""The morning push: today's fortune to every user whose notify_at (KST) has come (a cron every 5 minutes)."""

import threading

from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from core.management.argtypes import EXIT_USAGE, UsageErrorsMixin, flag
from core.nightly.process import connections_close, on_stop_signals
from core.ops.push_report import push_report_send
from core.push.celery_pages import PushCeleryUnavailable, push_celery_check, push_celery_dispatch, push_celery_wait
from core.push.fcm import PUSH_OFF
from core.push.sender import PushOff, PushOptions, push_send_due

BACKENDS = ("threads", "celery")
MAX_PAGE_SIZE = 10_000
MAX_CONCURRENCY = 1024
BACKEND_INVALID = f"--backend must be one of {', '.join(BACKENDS)}, got {{value!r}}."
PAGE_SIZE_INVALID = f"--page-size must be between 1 and {MAX_PAGE_SIZE}, got {{value}}."
CONCURRENCY_INVALID = f"--concurrency must be between 1 and {MAX_CONCURRENCY}, got {{value}}."
RATE_INVALID = "--rate must be a whole number of messages per second, 0 (no limit) or more, got {value}."
CONFIG_INVALID = "Push notifications are misconfigured: {error}"
RUN_FAILED = "The push run stopped: {reason}"
EXIT_STOPPED = 2


class Command(UsageErrorsMixin, BaseCommand):
    help = ("Send today's fortune (KST) to every user whose notify_at has come, who has notifications on, an "
            "active device and no push yet today. At most one push per user per day.")
    requires_system_checks = []

    def add_arguments(self, parser) -> None:
        add = parser.add_argument
        add("--backend", type=flag(BACKEND_INVALID, str, lambda b: b in BACKENDS), default="threads",
            help="threads: this process sends; celery: each page goes to a Celery worker (needs CELERY_BROKER_URL).")
        add("--page-size", type=flag(PAGE_SIZE_INVALID, int, lambda n: 1 <= n <= MAX_PAGE_SIZE),
            help="Users per keyset page (default PUSH_PAGE_SIZE).")
        add("--concurrency", type=flag(CONCURRENCY_INVALID, int, lambda n: 1 <= n <= MAX_CONCURRENCY),
            help="Sends in flight (default FCM_CONCURRENCY).")
        add("--rate", type=flag(RATE_INVALID, int, lambda n: n >= 0),
            help="Messages per second, 0 = no limit (default FCM_RATE_PER_SECOND).")

    def handle(self, *args, **options) -> None:
        stop = threading.Event()
        celery = options["backend"] == "celery"
        push_options = PushOptions(page_size=options["page_size"], concurrency=options["concurrency"],
                                   rate_per_second=options["rate"], backend=options["backend"])
        try:
            if celery:
                push_celery_check()
            with on_stop_signals(lambda _signal: stop.set()):  # unsent claims are given back
                result = push_send_due(options=push_options, stop=stop,
                                       dispatch=push_celery_dispatch if celery else None,
                                       wait=push_celery_wait if celery else None)
            push_report_send(result=result)
        except PushOff:
            self.stdout.write(PUSH_OFF)
            return
        except (ImproperlyConfigured, PushCeleryUnavailable) as exc:
            raise CommandError(CONFIG_INVALID.format(error=exc), returncode=EXIT_USAGE) from None
        finally:
            connections_close()  # Railway skips the next cron run while this process lives
        run = result.run
        self.stdout.write(
            f"push run {run.pk} for {run.for_date}: {run.status}; {run.due} due, {run.sent} sent, {run.failed} "
            f"failed, {run.no_fortune} without a fortune yet, {run.released} given back, {run.unconfirmed} "
            f"unconfirmed from a dead sender, {run.devices_deactivated} devices deactivated")
        if run.status in (run.Status.FAILED, run.Status.INTERRUPTED):
            raise CommandError(RUN_FAILED.format(reason=run.stop_reason), returncode=EXIT_STOPPED)

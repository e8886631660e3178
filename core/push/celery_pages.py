"""send_fortune_notifications --backend celery: the coordinator (the command) walks the due users in keyset
pages as always and sends each page to a Celery worker instead of sending it itself; workers claim, send
and add their outcome to the run (PushRun.pages_done), and the coordinator waits for that count in the
database (no chord: docs/SCALING.md). A page delivered twice (acks_late) claims nothing the second time:
its claim key is new and every row is already held."""

import logging
import time

from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerOperationalError

from core.models import PushRun
from core.resilience import send_with_retries
from fortuna_api.celery import BROKER_NOT_CONFIGURED, app

logger = logging.getLogger("fortuna.push")

PAGE_TASK = "core.push.page_send"
PAGES_NOT_DONE = "{left} of {pages} pages were not done by Celery workers within {seconds:g} s."
WAIT_SECONDS = 900.0  # a page of 500 takes ~1 s; longer means no worker is consuming the queue
POLL_SECONDS = 0.2


class PushCeleryUnavailable(Exception):
    pass


def push_celery_check() -> None:
    from django.conf import settings

    if not settings.CELERY_BROKER_URL:
        raise PushCeleryUnavailable(BROKER_NOT_CONFIGURED)


def _page_task():
    """Found by name, as core/nightly/executors/celery/broker.py finds its chunk task: core/tasks.py sits above."""
    if PAGE_TASK not in app.tasks:
        app.loader.import_default_modules()
    return app.tasks[PAGE_TASK]


def _broker_error(exc: BaseException) -> bool:
    return isinstance(exc, (BrokerOperationalError, ConnectionError, TimeoutError, OSError))


def push_celery_dispatch(run: PushRun, user_ids: list[int]) -> None:
    task = _page_task()
    send_with_retries(lambda: task.apply_async(kwargs={"run_id": run.pk, "user_ids": user_ids}),
                      retryable=_broker_error)


def push_celery_wait(run: PushRun, *, seconds: float = WAIT_SECONDS) -> str:
    """Wait until the workers finished every page of `run`; "" then, else the reason it stopped waiting."""
    deadline = time.monotonic() + seconds
    while True:
        pages, done, stop_reason = PushRun.objects.filter(pk=run.pk).values_list(
            "pages", "pages_done", "stop_reason").get()
        if done >= pages or stop_reason:
            return stop_reason
        if time.monotonic() > deadline:
            return PAGES_NOT_DONE.format(left=pages - done, pages=pages, seconds=seconds)
        PushRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
        time.sleep(POLL_SECONDS)

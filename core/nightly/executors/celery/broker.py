"""The Celery side of the executor that is not about chunks: the broker check before a run, the
task found by name, which send errors mean "the broker is down", and whether any worker answers."""

import logging

from django.conf import settings
from kombu.exceptions import OperationalError as BrokerOperationalError

from core.limiter import LIMITER_NEEDS_REDIS
from core.nightly.options import CeleryBackendUnavailable
from fortuna_api.celery import BROKER_NOT_CONFIGURED, app

logger = logging.getLogger("fortuna.nightly")

CHUNK_TASK = "fortuna.celery_chunk_generate"
BROKER_UNAVAILABLE = (
    "The celery backend cannot reach its broker at {url} ({error}). Start the broker or fix "
    "CELERY_BROKER_URL; nothing was written. (--backend threads needs no broker.)"
)


def _redacted(url: str) -> str:
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"


def celery_backend_check(*, rpm: int | None = None, tpm: int | None = None, timeout: float = 3.0) -> None:
    """Raise CeleryBackendUnavailable unless the backend can run: a broker that answers
    (BROKER_UNAVAILABLE, fortuna_api.celery.BROKER_NOT_CONFIGURED) and, when requests or tokens are
    limited (rpm/tpm, else OPENAI_RPM/OPENAI_TPM), Redis for the limiter the workers share
    (core.limiter.LIMITER_NEEDS_REDIS). Call before anything is written."""
    url = settings.CELERY_BROKER_URL
    if not url:
        raise CeleryBackendUnavailable(BROKER_NOT_CONFIGURED)
    limited = (settings.OPENAI_RPM if rpm is None else rpm) or (settings.OPENAI_TPM if tpm is None else tpm)
    if limited and not settings.REDIS_URL:
        raise CeleryBackendUnavailable(LIMITER_NEEDS_REDIS)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=timeout)
    except Exception as exc:  # kombu raises the transport's own errors (redis, amqp, socket)
        raise CeleryBackendUnavailable(BROKER_UNAVAILABLE.format(url=_redacted(url), error=exc)) from exc


def broker_error(exc: BaseException) -> bool:
    """A broker that is down, restarting or not answering (kombu wraps the transport's errors)."""
    return isinstance(exc, (BrokerOperationalError, ConnectionError, TimeoutError, OSError)) or isinstance(
        exc, app.connection_for_write().connection_errors)


def chunk_task():
    """The chunk task, found by name: core/tasks.py sits above the nightly engine and calls this
    package, so it is loaded the way a worker loads it (Celery's autodiscovery), not imported from
    here. The task object, not send_task(), so that task_always_eager (tests) runs it in place."""
    if CHUNK_TASK not in app.tasks:
        app.loader.import_default_modules()
    return app.tasks[CHUNK_TASK]


def workers_answer() -> bool:
    if app.conf.task_always_eager:
        return True
    try:
        # limit=1: back at the first answer (without it, ping always waits the whole timeout).
        return bool(app.control.ping(timeout=1.0, limit=1))
    except Exception:  # noqa: BLE001 - a broker without remote control: only a note is lost
        logger.debug("nightly run: celery ping failed", exc_info=True)
        return False

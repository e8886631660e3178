"""The Celery app: one more interface to the batch services (core/tasks.py), configured from Django's
settings (the CELERY_ names in fortuna_api/settings.py).

    celery -A fortuna_api worker -P threads -c 2

Imported by fortuna_api/__init__.py, so a @shared_task is bound to this app (and its broker) before
anything sends one: otherwise Celery falls back to its default amqp://localhost broker.
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fortuna_api.settings")

BROKER_NOT_CONFIGURED = (
    "The celery backend needs a broker: set CELERY_BROKER_URL (redis://host:6379/0 or "
    "amqp://user:password@host:5672//), or REDIS_URL, which it defaults to; or use --backend threads."
)

app = Celery("fortuna_api")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.worker_init.connect
def _worker_refuses_without_broker(**_) -> None:
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    if not settings.CELERY_BROKER_URL:
        raise ImproperlyConfigured(BROKER_NOT_CONFIGURED)

"""Shared helpers for the batch tests (service, command and subprocess level)."""

import datetime as dt
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from django.apps import apps
from django.core.management import call_command
from django.db.backends.signals import connection_created

from core.models import FortuneResult, User

BASE = dt.date(2030, 3, 10)
TARGET = BASE + dt.timedelta(days=1)


def table_counts() -> dict[str, int]:
    """Row count of every model's table: 'nothing written' means this does not change."""
    return {model._meta.label: model._default_manager.count() for model in apps.get_models()}


def run_batch(*args: str) -> str:
    """call_command with the given CLI args; returns stdout (raises CommandError like the CLI exits)."""
    out = io.StringIO()
    call_command("generate_daily_fortunes", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def fortune_map(*, for_date: dt.date = TARGET) -> dict[int, int]:
    """user_id -> generation_id for for_date."""
    return dict(FortuneResult.objects.filter(for_date=for_date).values_list("user_id", "generation_id"))


def eligible_ids() -> set[int]:
    return set(User.objects.filter(is_active=True, birth_date_solar__isnull=False).values_list("pk", flat=True))


@contextmanager
def connections_opened() -> Iterator[list[str]]:
    """The names of the threads that open a database connection inside the block."""
    opened_by: list[str] = []

    def record(sender, connection, **kwargs):
        opened_by.append(threading.current_thread().name)

    connection_created.connect(record)
    try:
        yield opened_by
    finally:
        connection_created.disconnect(record)

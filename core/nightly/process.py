"""What the batch does to the process it runs in: signals become a stop request, the cyclic GC
pauses during a run, the exit skips the GC's last pass, and no connection outlives the night."""

import atexit
import gc
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import connections
from django.db.backends.signals import connection_created

from core.nightly.guards import STOP_SIGNAL, StopToken


@contextmanager
def on_stop_signals(handler: Callable[[str], object]) -> Iterator[None]:
    """SIGTERM/SIGINT (Railway stopping the service, Ctrl-C) call handler(signal name); the previous
    handlers come back afterwards. Off the main thread Python allows no handlers, so none are installed
    there. The nightly run and the morning push both stop this way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, lambda signum, frame: handler(signal.Signals(signum).name))
                for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, previous_handler in previous.items():
            signal.signal(signum, previous_handler)


def stop_on_signals(stop: StopToken):
    """SIGTERM/SIGINT ask `stop` to stop (interrupted)."""
    return on_stop_signals(lambda name: stop.request(STOP_SIGNAL.format(signal=name), interrupted=True))


@contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC would scan the in-flight generations (pydantic models) over and over. The
    batch's objects are freed by reference counting, so the collector pauses during the run and the
    scheduler collects once every few pages instead."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def gc_skip_at_exit() -> None:
    """At interpreter exit, skip the collector's last pass over every object (with Django and the
    openai SDK loaded it frees nothing that matters). Registered once, however often called."""
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)


def connections_close() -> None:
    """No connection may outlive the night: Railway skips a cron run while a process lives. One
    inside an atomic block belongs to a caller (call_command in a test transaction) and stays open."""
    for conn in connections.all(initialized_only=True):
        if not conn.in_atomic_block:
            conn.close()


@contextmanager
def nightly_statement_timeout(milliseconds: int) -> Iterator[None]:
    """The batch's statements may take longer than a web request's (DB_BATCH_STATEMENT_TIMEOUT_MS over
    DB_STATEMENT_TIMEOUT_MS): every PostgreSQL connection of this process, open now or opened meanwhile
    (the writer thread's, a reconnect after a restart), gets this timeout; 0 means none."""

    def apply(conn) -> None:
        if conn.vendor == "postgresql" and conn.connection is not None:
            with conn.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, false)", [str(milliseconds)])

    def on_created(sender, connection, **kwargs) -> None:
        apply(connection)

    uid = f"fortuna-batch-statement-timeout-{id(on_created)}"
    connection_created.connect(on_created, weak=False, dispatch_uid=uid)
    try:
        for conn in connections.all(initialized_only=True):
            apply(conn)
        yield
    finally:
        connection_created.disconnect(dispatch_uid=uid)

"""Django's PostgreSQL backend; a persistent connection's health check costs a round trip only when the
server has said something.

Django's CONN_HEALTH_CHECKS sends `SELECT 1` before the first query of every request that reuses a
persistent connection: on /fortune/today a second round trip to the database, whose cost on this
service's hot path is measured in docs/BENCHMARKS.md (API). A connection that sits idle between
requests receives nothing unless the server ends it (a restart, pg_terminate_backend, an idle
timeout: PostgreSQL sends its FATAL message and closes the socket) or sends a notice. So the check
first asks the socket: quiet means healthy and no statement is sent; anything to read, and Django's
own check (`SELECT 1`, closing a dead connection so that the query reconnects) runs as before.
A peer that vanished without a word (a network partition) hangs `SELECT 1` as long as the query
itself, so no case that Django's check catches goes by. tests/fortuna_api/test_postgresql_backend.py
runs both checks through the same scenarios.
"""

import select

from django.db.backends.postgresql import base


def connection_is_quiet(connection) -> bool:
    """Whether an idle psycopg connection is open and has nothing waiting to be read."""
    if connection.closed:
        return False
    poller = select.poll()
    poller.register(connection.fileno(), select.POLLIN | select.POLLPRI)
    return not poller.poll(0)


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        if (
            self.connection is not None
            and self.health_check_enabled
            and not self.health_check_done
            and not self.pool
            and connection_is_quiet(self.connection)
        ):
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

"""The health check of fortuna_api.postgresql against Django's own, on the same scenarios (PostgreSQL only).

Each scenario runs a fresh connection wrapper of each class as a web worker would: one request
opens it, the next request reuses it (Django's request_started handler runs
close_if_unusable_or_obsolete, then the first query runs the health check).
"""

import select

import pytest
from django.db import connection
from django.db.backends.postgresql.base import DatabaseWrapper as DjangoWrapper

from fortuna_api.postgresql.base import DatabaseWrapper as FortunaWrapper
from fortuna_api.postgresql.base import connection_is_quiet

pytestmark = pytest.mark.django_db

MARKER = "SELECT 'health-check-test' AS marker"
WRAPPERS = {"django": DjangoWrapper, "fortuna": FortunaWrapper}


@pytest.fixture(autouse=True)
def _postgres_only(uses_postgres):
    if not uses_postgres:
        pytest.skip("the PostgreSQL backend's health check needs PostgreSQL")


def _open(cls, alias: str):
    # Connections of their own (autocommit): the test's transaction on the default connection would
    # hold back NOTIFY until its end, and freeze what pg_stat_activity shows.
    return cls({**connection.settings_dict, "CONN_MAX_AGE": 600, "CONN_HEALTH_CHECKS": True}, alias=alias)


@pytest.fixture(params=list(WRAPPERS))
def wrapper(request):
    db = _open(WRAPPERS[request.param], f"health-check-{request.param}")
    yield db
    db.close()


@pytest.fixture
def other():
    """Another session, which ends, notifies and watches the wrapper's."""
    db = _open(DjangoWrapper, "health-check-other")
    yield db
    db.close()


def _query(db, sql: str, params=()):
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() if cursor.description else None


def _backend_pid(db) -> int:
    return _query(db, "SELECT pg_backend_pid()")[0]


def _next_request(db) -> None:
    """What Django does between two requests on a persistent connection."""
    db.close_if_unusable_or_obsolete()


def _last_statement(other, pid: int) -> str:
    return _query(other, "SELECT query FROM pg_stat_activity WHERE pid = %s", [pid])[0]


def test_a_healthy_connection_is_kept_across_requests(wrapper):
    pid = _backend_pid(wrapper)
    _next_request(wrapper)
    assert _backend_pid(wrapper) == pid


def test_a_connection_the_server_ended_is_replaced_before_the_query(wrapper, other):
    pid = _backend_pid(wrapper)
    assert _query(other, "SELECT pg_terminate_backend(%s, 5000)", [pid]) == (True,)  # waits for the end
    _next_request(wrapper)
    assert _query(wrapper, "SELECT 1") == (1,)  # no error reaches the request
    assert _backend_pid(wrapper) != pid


def test_only_djangos_check_sends_a_statement_on_a_quiet_connection(wrapper, other):
    pid = _backend_pid(wrapper)
    _query(wrapper, MARKER)
    _next_request(wrapper)
    wrapper.close_if_health_check_failed()
    expected = MARKER if isinstance(wrapper, FortunaWrapper) else "SELECT 1"
    assert _last_statement(other, pid) == expected
    assert wrapper.health_check_done


def test_something_to_read_makes_ours_run_djangos_check(wrapper, other):
    """A notification waiting on the socket: ours asks the server (SELECT 1), like Django's, and keeps
    the connection."""
    pid = _backend_pid(wrapper)
    _query(wrapper, "LISTEN fortuna_health_check_test")
    _query(other, "NOTIFY fortuna_health_check_test")
    _wait_until_readable(wrapper)
    _next_request(wrapper)
    wrapper.close_if_health_check_failed()
    assert _last_statement(other, pid) == "SELECT 1"
    assert _backend_pid(wrapper) == pid


def _wait_until_readable(db, timeout: float = 5.0) -> None:
    poller = select.poll()
    poller.register(db.connection.fileno(), select.POLLIN)
    assert poller.poll(timeout * 1000), "the notification never reached the socket"
    assert not connection_is_quiet(db.connection)

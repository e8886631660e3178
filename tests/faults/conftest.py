"""Fixtures for the fault suite: servers of the test's own, started and stopped by the test."""

import shutil
from collections.abc import Iterator

import pytest

from tests.faults.servers import PostgresServer, RabbitVhost, RedisServer, pg_bin_dir, port_open


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    if pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    server = PostgresServer.create().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer.create().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_rabbit_vhost() -> Iterator[RabbitVhost]:
    if shutil.which("rabbitmqctl") is None or not port_open(5672):
        pytest.skip("RabbitMQ is not running here")
    vhost = RabbitVhost.create()
    try:
        yield vhost
    finally:
        vhost.stop()

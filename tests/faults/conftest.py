"""Fixtures for the fault suite: servers of the test's own, started and stopped by the test."""

import shutil
from collections.abc import Iterator

import pytest

from tests.faults.reports import SLACK_PATH
from tests.faults.servers import PostgresServer, RabbitVhost, RedisServer, pg_bin_dir, port_open
from tests.webhook_receiver import WebhookReceiver


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


@pytest.fixture
def slack_receiver(settings, webhook_receiver) -> WebhookReceiver:
    """Where an in-process night's Slack reports go (tests/faults/reports.py assert_reported reads them)."""
    settings.SLACK_WEBHOOK_URL = webhook_receiver.url(SLACK_PATH)
    settings.DISCORD_WEBHOOK_URL = ""
    return webhook_receiver

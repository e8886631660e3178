"""The fault suite's own servers do what the faults need: restart, pause, kill, close connections."""

import psycopg2
import pytest
import redis


def test_own_postgres_restarts_and_drops_open_connections(own_postgres):
    conn = psycopg2.connect(own_postgres.url())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    own_postgres.restart()
    with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
        cur.execute("SELECT 1")
    fresh = psycopg2.connect(own_postgres.url())
    with fresh.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchone() == (2,)
    fresh.close()


def test_own_redis_pauses_and_is_empty_after_a_restart(own_redis):
    client = redis.Redis.from_url(own_redis.url(), socket_timeout=0.3, socket_connect_timeout=0.3)
    client.set("k", "v")
    own_redis.pause()
    with pytest.raises(redis.TimeoutError):
        client.get("k")
    own_redis.resume()
    own_redis.restart()
    fresh = redis.Redis.from_url(own_redis.url(), socket_timeout=1)
    assert fresh.get("k") is None

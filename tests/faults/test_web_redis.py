"""The web API with its Redis cache down: a dead port, and a redis-server that accepts connections but
never answers (SIGSTOP). The API keeps its normal answers within 2 s each; /healthz says the cache
is down and stays 200.

Django-level tests run the views in this process against the test's own cache settings; the
gunicorn-level ones start the Procfile's web line with REDIS_URL pointing at the broken Redis.
"""

import datetime as dt
import logging
import time

import pytest
from django.core.cache import cache
from django.db import connection
from django.utils import timezone
from redis.exceptions import TimeoutError as RedisTimeoutError
from rest_framework import exceptions
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.api.authentication import CachedTokenAuthentication
from core.models import User
from core.throttles import THROTTLE_CACHE_DOWN
from fortuna_api.redis_cache import CacheUnavailable, SharedClientRedisCache
from tests.api.conftest import fortune_store
from tests.deploy.server import database_url_for, production_env, web_server_start, web_server_stop
from tests.factories import user_create
from tests.faults.servers import free_port

BOUND = 2.0  # seconds each request may take with the cache down (issue 16)
TIMEOUT = 0.5  # the settings' default REDIS_CONNECT_TIMEOUT / REDIS_SOCKET_TIMEOUT
PASSWORD = "a-long-passphrase"


def _redis_caches(url: str, *, down_seconds: float = 5.0) -> dict:
    # What fortuna_api/settings.py builds for a REDIS_URL.
    return {
        "default": {
            "BACKEND": "fortuna_api.redis_cache.SharedClientRedisCache",
            "LOCATION": url,
            "OPTIONS": {"socket_connect_timeout": TIMEOUT, "socket_timeout": TIMEOUT, "down_seconds": down_seconds},
        }
    }


def _use_redis(settings, url: str, *, down_seconds: float = 5.0, token_seconds: int = 15) -> None:
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CACHES = _redis_caches(url, down_seconds=down_seconds)
    settings.AUTH_TOKEN_CACHE_SECONDS = token_seconds


def _timed(call):
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


@pytest.fixture(params=["dead port", "paused server"])
def broken_redis(request, settings):
    """REDIS_URL (cache, broker) pointing at a Redis that fails; yields the test user's token.

    The paused server held the user's cached token entry before it stopped answering."""
    user = user_create(username="known", birth_date_solar=dt.date(1990, 5, 17))
    token = Token.objects.create(user=user).key
    fortune_store(user=user, for_date=timezone.localdate())
    if request.param == "dead port":
        _use_redis(settings, f"redis://127.0.0.1:{free_port()}/0")
        yield token
        return
    server = request.getfixturevalue("own_redis")
    _use_redis(settings, server.url())
    assert _api(token).get("/me").status_code == 200  # cached while Redis answered
    server.pause()
    yield token


def _api(token: str | None = None) -> APIClient:
    client = APIClient()
    if token:
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.mark.django_db
def test_the_api_answers_normally_within_the_bound(broken_redis, caplog):
    token = broken_redis
    caplog.set_level(logging.WARNING)
    steps = [
        ("register", 201, lambda: _api().post(
            "/auth/register", {"username": "newcomer", "email": "n@example.com", "password": PASSWORD},
            format="json")),
        ("token", 200, lambda: _api().post("/auth/token", {"username": "newcomer", "password": PASSWORD},
                                           format="json")),
        ("fortune", 200, lambda: _api(token).get("/fortune/today")),
        ("patch me", 200, lambda: _api(token).patch("/me", {"gender": "M"}, format="json")),
        ("healthz", 200, lambda: _api().get("/healthz")),
    ]
    for name, expected, call in steps:
        response, seconds = _timed(call)
        assert (name, response.status_code) == (name, expected), getattr(response, "data", response.content)
        assert seconds < BOUND, f"{name} took {seconds:.2f} s"
    assert response.json() == {"status": "ok", "database": "ok", "cache": "down", "broker": "down"}
    assert User.objects.get(username="known").gender == "M"
    assert any(record.msg == THROTTLE_CACHE_DOWN for record in caplog.records)


@pytest.mark.django_db
def test_token_authentication_falls_back_to_the_database(settings):
    _use_redis(settings, f"redis://127.0.0.1:{free_port()}/0")
    user = user_create()
    key = Token.objects.create(user=user).key
    authenticated, _ = CachedTokenAuthentication().authenticate_credentials(key)
    assert authenticated.pk == user.pk
    User.objects.filter(pk=user.pk).update(is_active=False)  # the database's answer, not a cached one
    with pytest.raises(exceptions.AuthenticationFailed, match="User inactive or deleted."):
        CachedTokenAuthentication().authenticate_credentials(key)


@pytest.mark.django_db(transaction=True)
def test_a_deactivation_the_cache_missed_is_refused_within_the_token_cache_seconds(settings, own_redis):
    # Redis fails once, and while the process backs off it the user is deactivated: the save succeeds,
    # its cached entry (still in Redis) is not dropped, and it ends within AUTH_TOKEN_CACHE_SECONDS of
    # being written. (A paused Redis runs the DEL it was sent once it resumes: the window is the gap.)
    _use_redis(settings, own_redis.url(), down_seconds=0.5, token_seconds=3)
    user = user_create()
    key = Token.objects.create(user=user).key
    CachedTokenAuthentication().authenticate_credentials(key)
    cached_at = time.monotonic()
    own_redis.pause()
    try:
        with pytest.raises(RedisTimeoutError):
            cache.get("anything")
    finally:
        own_redis.resume()
    failed_at = time.monotonic()
    user.is_active = False
    user.save()  # inside the back-off window: no exception, nothing dropped
    time.sleep(max(0.0, failed_at + 0.6 - time.monotonic()))  # past the window, before the entry's end
    stale, _ = CachedTokenAuthentication().authenticate_credentials(key)
    assert stale.is_active  # the documented bound, not a leak
    time.sleep(max(0.0, cached_at + 3.1 - time.monotonic()))
    with pytest.raises(exceptions.AuthenticationFailed, match="User inactive or deleted."):
        CachedTokenAuthentication().authenticate_credentials(key)


def test_after_a_failure_the_cache_is_not_called_until_the_window_ends(own_redis):
    cache = SharedClientRedisCache(own_redis.url(), {"OPTIONS": _redis_caches("")["default"]["OPTIONS"]
                                                    | {"down_seconds": 0.5}})
    cache.set("k", 1)
    own_redis.pause()
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        cache.get("k")
    assert time.monotonic() - started < TIMEOUT + 0.3  # the read timeout, not redis-py's 5 s default
    started = time.monotonic()
    for call in (lambda: cache.get("k"), lambda: cache.add("lock", 1), lambda: cache.delete_many(["k"])):
        with pytest.raises(CacheUnavailable):
            call()
    assert time.monotonic() - started < 0.05  # no network while backing off
    own_redis.resume()
    time.sleep(0.5)
    assert cache.get("k") == 1  # tried again after the window: Redis is back


# --- gunicorn, from the Procfile, with REDIS_URL at the broken Redis ----------------------------------


@pytest.mark.subprocess
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("fault", ["dead port", "paused server"])
def test_gunicorn_answers_normally_with_redis_down(fault, request, tmp_path):
    user = user_create(username="known", birth_date_solar=dt.date(1990, 5, 17))
    token = Token.objects.create(user=user).key
    fortune_store(user=user, for_date=timezone.localdate())
    if fault == "dead port":
        redis_url, server = f"redis://127.0.0.1:{free_port()}/0", None
    else:
        server = request.getfixturevalue("own_redis")
        redis_url = server.url()
    env = production_env(database_url=database_url_for(connection.settings_dict), port=0,
                         extra={"REDIS_URL": redis_url, "WEB_CONCURRENCY": "1"})
    web = web_server_start(env=env, log_path=tmp_path / "gunicorn.log")
    try:
        if server is not None:
            assert web.request("/me", token=token).status == 200  # the token user cached while Redis answered
            server.pause()
        json = {"Content-Type": "application/json"}
        steps = [
            ("register", 201, dict(path="/auth/register", method="POST", headers=json,
                                   data=b'{"username": "newcomer", "email": "n@example.com", "password": "'
                                        + PASSWORD.encode() + b'"}')),
            ("token", 200, dict(path="/auth/token", method="POST", headers=json,
                                data=b'{"username": "newcomer", "password": "' + PASSWORD.encode() + b'"}')),
            ("fortune", 200, dict(path="/fortune/today", token=token)),
            ("patch me", 200, dict(path="/me", method="PATCH", token=token, headers=json, data=b'{"gender": "M"}')),
            ("healthz", 200, dict(path="/healthz")),
        ]
        for name, expected, kwargs in steps:
            response, seconds = _timed(lambda kwargs=kwargs: web.request(timeout=10, **kwargs))
            assert (name, response.status) == (name, expected), response.body[:500]
            assert seconds < BOUND, f"{name} took {seconds:.2f} s"
        assert response.json() == {"status": "ok", "database": "ok", "cache": "down", "broker": "down"}
        assert "Traceback" not in web.log(), web.log()[-4000:]
    finally:
        web_server_stop(web)

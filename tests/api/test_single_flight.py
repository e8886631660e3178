"""N concurrent requests for a missing fortune: exactly one generation (real threads, own connections)."""

import datetime as dt
import threading

import pytest
from django.db import connection

from core.models import FortuneGeneration, FortuneResult
from tests.api.conftest import client_for
from tests.factories import user_create

THREADS = 10


def _get_concurrently(clients, path="/fortune/today"):
    barrier = threading.Barrier(len(clients))
    results = [None] * len(clients)

    def call(i, client):
        try:
            barrier.wait(timeout=10)
            response = client.get(path)
            results[i] = (response.status_code, response.json())
        except Exception as exc:  # surfaced by the assertion below
            results[i] = ("error", repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=call, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@pytest.mark.django_db(transaction=True)
def test_ten_concurrent_requests_from_one_user_make_one_generation(fake_provider):
    fake_provider.delay = 0.3  # long enough that every request arrives while the first generates
    user = user_create(birth_date_solar=dt.date(1985, 11, 3), gender="M")
    client = client_for(user)
    results = _get_concurrently([client] * THREADS)
    assert [status for status, _ in results] == [200] * THREADS, results
    assert all(body == results[0][1] for _, body in results)
    assert fake_provider.calls == 1
    assert FortuneGeneration.objects.count() == 1
    assert FortuneResult.objects.filter(user=user).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_users_with_equal_inputs_share_one_generation(fake_provider):
    fake_provider.delay = 0.3
    users = [user_create(birth_date_solar=dt.date(1985, 11, 3), gender="M") for _ in range(4)]
    results = _get_concurrently([client_for(u) for u in users])
    assert [status for status, _ in results] == [200] * 4, results
    assert fake_provider.calls == 1
    assert FortuneGeneration.objects.count() == 1
    assert FortuneResult.objects.count() == 4

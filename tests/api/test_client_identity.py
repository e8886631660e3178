"""Client identity for the throttles: the address our own proxy saw, never what the client wrote.

Railway's edge proxy appends the address it accepted the connection from to X-Forwarded-For, so a
client's forged value comes first and the real one last ("forged, real"); gunicorn sees the edge's
internal address as REMOTE_ADDR. TRUSTED_PROXY_COUNT (DRF's NUM_PROXIES) says how many such entries
to count from the right.
"""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from core.admin import ADMIN_LOGIN_THROTTLED
from core.throttles import AuthRateThrottle
from tests.factories import user_create
from tests.fortuna_api.test_settings import start

pytestmark = pytest.mark.django_db

EDGE_ADDRESS = "10.250.0.3"  # the proxy's own address, what gunicorn sees as REMOTE_ADDR
CLIENT = "203.0.113.7"  # the address the edge accepted the connection from
ATTEMPTS = 30


def _allowed() -> int:
    """THROTTLE_AUTH's number of requests per period (20/min by default)."""
    return AuthRateThrottle().num_requests


def _behind_edge(forged: str, client: str = CLIENT) -> dict:
    # What reaches gunicorn: the client's own header, the edge's entry appended after it.
    return {"HTTP_X_FORWARDED_FOR": f"{forged}, {client}", "REMOTE_ADDR": EDGE_ADDRESS}


def _login(client: APIClient, *, forged: str, real: str = CLIENT) -> int:
    return client.post(
        "/auth/token", {"username": "victim", "password": "guess"}, format="json", **_behind_edge(forged, real)
    ).status_code


def test_thirty_logins_with_thirty_forged_addresses_are_throttled_as_one_client():
    user_create(username="victim", password="right-password-1")
    client = APIClient()
    codes = [_login(client, forged=f"198.51.100.{i}") for i in range(ATTEMPTS)]
    assert codes == [400] * _allowed() + [429] * (ATTEMPTS - _allowed())


def test_another_real_client_keeps_its_own_budget():
    client = APIClient()
    for i in range(_allowed()):
        _login(client, forged=f"198.51.100.{i}")
    assert _login(client, forged="198.51.100.250") == 429
    assert _login(client, forged="198.51.100.250", real="203.0.113.8") == 400


def test_sign_ups_with_forged_addresses_are_throttled_as_one_client():
    client = APIClient()
    codes = [
        client.post(
            "/auth/register",
            {"username": f"flood{i}", "email": f"flood{i}@example.com", "password": "a-long-passphrase"},
            format="json", **_behind_edge(f"198.51.100.{i}"),
        ).status_code
        for i in range(ATTEMPTS)
    ]
    assert codes == [201] * _allowed() + [429] * (ATTEMPTS - _allowed())


def test_without_a_trusted_proxy_the_header_is_ignored(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 0}
    client = APIClient()
    codes = [
        client.post("/auth/token", {"username": "x", "password": "y"}, format="json",
                    HTTP_X_FORWARDED_FOR=f"198.51.100.{i}", REMOTE_ADDR="192.0.2.9").status_code
        for i in range(ATTEMPTS)
    ]
    assert codes.count(429) == ATTEMPTS - _allowed()


def _admin_login(client: Client, *, forged: str, real: str = CLIENT):
    return client.post("/admin/login/", {"username": "admin", "password": "guess"}, **_behind_edge(forged, real))


def test_admin_login_posts_are_throttled_per_client():
    user_create(username="admin", password="right-password-1", is_staff=True)
    client = Client()
    responses = [_admin_login(client, forged=f"198.51.100.{i}") for i in range(ATTEMPTS)]
    codes = [response.status_code for response in responses]
    assert codes == [200] * _allowed() + [429] * (ATTEMPTS - _allowed())  # 200: the form again, with its error
    throttled = responses[-1]
    assert int(throttled["Retry-After"]) >= 1
    assert throttled.content.decode() == ADMIN_LOGIN_THROTTLED.format(seconds=throttled["Retry-After"])
    # Showing the form is not counted, and another client still logs in.
    assert client.get("/admin/login/", **_behind_edge("198.51.100.1")).status_code == 200
    ok = client.post("/admin/login/", {"username": "admin", "password": "right-password-1"},
                     **_behind_edge("198.51.100.1", "203.0.113.8"))
    assert ok.status_code == 302


def test_the_admin_form_and_the_api_share_one_budget():
    api, browser = APIClient(), Client()
    for i in range(_allowed()):
        _login(api, forged=f"198.51.100.{i}")
    assert _admin_login(browser, forged="198.51.100.77").status_code == 429


def test_trusted_proxy_count_is_read_and_checked_at_start():
    assert start(TRUSTED_PROXY_COUNT="2").returncode == 0
    result = start(TRUSTED_PROXY_COUNT="one")
    assert result.returncode != 0
    assert "TRUSTED_PROXY_COUNT must be a whole number" in result.stderr

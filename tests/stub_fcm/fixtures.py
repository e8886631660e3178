"""pytest plugin (loaded by tests/conftest.py): the FCM stub server for the whole session.

* ``fcm_stub_server`` (session): the stub in its own process, and one throwaway service account whose
  RSA key is generated once (2048-bit generation costs ~0.1 s).
* ``stub_fcm``: the stub reset (no faults, counters and messages cleared) before the test.
* ``fcm_settings``: ``stub_fcm`` plus Django settings pointing at it (FCM_CREDENTIALS as JSON text).
"""

import json
from collections.abc import Iterator

import pytest

from tests.stub_fcm.server import StubClient, StubProcess, service_account_info, start_stub_process

__all__ = ["fcm_settings", "fcm_stub_server", "stub_fcm"]

PROJECT_ID = "fortuna-test"


@pytest.fixture(scope="session")
def fcm_stub_server() -> Iterator[StubProcess]:
    stub = start_stub_process()
    stub.account = service_account_info(token_uri=stub.token_uri, project_id=PROJECT_ID)
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def stub_fcm(fcm_stub_server: StubProcess) -> StubClient:
    fcm_stub_server.reset(config=True)
    return fcm_stub_server


@pytest.fixture
def fcm_settings(settings, stub_fcm: StubProcess) -> StubProcess:
    settings.FCM_CREDENTIALS = json.dumps(stub_fcm.account)
    settings.FCM_PROJECT_ID = ""
    settings.FCM_API_URL = stub_fcm.base_url
    settings.FCM_RATE_PER_SECOND = 0
    # The stub's Retry-After is 1 s; a test that waits it says so itself.
    return stub_fcm

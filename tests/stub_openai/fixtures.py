"""pytest plugin (loaded by tests/conftest.py): the OpenAI stub server for the whole session.

* ``stub_server`` (session): the stub in its own process, started once, stopped at the end.
* ``stub_openai``: the same stub reset to defaults (latency 0, no faults, counters and request
  numbering at zero) before the test; returns a StubClient (.base_url, .configure(), .counters(),
  .requests(), .env()).
* ``openai_settings``: ``stub_openai`` plus Django settings pointing at it (FORTUNE_PROVIDER=openai).
* ``stub_process(**cli_args)``: a separate stub process for one block (benchmarks, odd start-up options).
"""

from collections.abc import Iterator

import pytest

from tests.stub_openai.server import StubClient, StubProcess, start_stub_process, stub_process

__all__ = ["openai_settings", "stub_openai", "stub_process", "stub_server"]

STUB_API_KEY = "sk-test-stub"


@pytest.fixture(scope="session")
def stub_server() -> Iterator[StubProcess]:
    stub = start_stub_process()
    try:
        yield stub
    finally:
        stub.stop()


@pytest.fixture
def stub_openai(stub_server: StubProcess) -> StubClient:
    stub_server.reset(config=True)
    return StubClient(stub_server.base_url)


@pytest.fixture
def openai_settings(settings, stub_openai: StubClient) -> StubClient:
    settings.FORTUNE_PROVIDER = "openai"
    settings.OPENAI_API_KEY = STUB_API_KEY
    settings.OPENAI_BASE_URL = stub_openai.base_url
    return stub_openai

import os

import pytest

pytest_plugins = ["tests.stub_openai.fixtures", "tests.stub_fcm.fixtures", "tests.webhook_receiver"]


@pytest.fixture
def uses_postgres(settings) -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("postgresql")


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("TEST_REDIS_URL", "")
    if not url:
        pytest.skip("TEST_REDIS_URL is not set")
    return url


@pytest.fixture
def eager():
    """Celery runs each task in the calling process, at once (no broker, no worker)."""
    from fortuna_api.celery import app

    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False

import datetime as dt
import threading
import time

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Generated, ProviderError
from core.fortunes.providers.local import LocalProvider
from core.fortunes.schema import GeneratedPart
from core.models import FortuneGeneration, FortuneResult, User
from tests.factories import user_create

_SCORED = {"score": 61, "text": "차분하게 흐름을 살피면 좋은 하루입니다."}
PART = GeneratedPart(
    summary="작은 일에서 기쁨을 찾는 날입니다.",
    overall=_SCORED,
    categories={"love": _SCORED, "money": _SCORED, "work": _SCORED, "health": _SCORED},
    lucky={"color": "파란색", "number": 7, "direction": "동쪽"},
    advice="서두르지 말고 한 가지에 집중하세요.",
)


@pytest.fixture(autouse=True)
def _clear_cache():
    # DRF throttles and the on-demand quota live in the cache: no state leaks between tests.
    cache.clear()
    yield
    cache.clear()


def client_for(user: User) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def fortune_store(
    *, user: User, for_date: dt.date, source: str = "batch", generator: str = "local", summary: str | None = None
) -> FortuneResult:
    """A stored fortune as the batch writes it (generation keyed by the input hash + result)."""
    inp = GenerationInput.for_user(user=user, for_date=for_date, generator=generator)
    part = PART if summary is None else PART.model_copy(update={"summary": summary})
    generation, _ = FortuneGeneration.objects.get_or_create(
        input_hash=inp.hash,
        defaults={"for_date": for_date, "content": inp.compose(part).as_json(), "provider": "local"},
    )
    return FortuneResult.objects.create(user=user, for_date=for_date, generation=generation, source=source)


class FakeProvider:
    """Stands in for a provider in failure-path tests: each generate() is one scripted attempt."""

    name = "fake"
    model = "fake-1"
    generator = "fake:fake-1"

    def __init__(self, *, script=None, delay: float = 0.0) -> None:
        self.script = list(script or [])  # exceptions to raise, in order; then success
        self.delay = delay
        self.calls = 0
        self.timeouts: list[float | None] = []
        self._lock = threading.Lock()

    def factory(self, *, name=None, timeout=None):
        self.timeouts.append(timeout)
        return self

    def generate(self, inp: GenerationInput) -> Generated:
        with self._lock:
            self.calls += 1
            step = self.script.pop(0) if self.script else None
        if self.delay:
            time.sleep(self.delay)
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            return step(inp)
        return Generated(content=inp.compose(PART), tokens_in=100, tokens_out=200)


@pytest.fixture
def fake_provider(monkeypatch) -> FakeProvider:
    provider = FakeProvider()
    monkeypatch.setattr("core.services.fortunes.get_provider", provider.factory)
    return provider


def provider_error(reason: str = "server_error", *, retryable: bool = True, retry_after: float | None = None):
    return ProviderError(f"fake {reason}", reason=reason, retryable=retryable, retry_after=retry_after)


@pytest.fixture
def user() -> User:
    return user_create(birth_date_solar=dt.date(1990, 5, 17), gender="F")


@pytest.fixture
def auth_client(user) -> APIClient:
    return client_for(user)


def kst_today() -> dt.date:
    return timezone.localdate()


def assert_fallback_served(response, *, user: User) -> dict:
    """The response is today's saju-rule fortune for the user (the local provider's), stored as a
    fallback: source "fallback", the generation's provider recorded as "local"."""
    assert response.status_code == 200, response.content[:500]
    body = response.json()
    assert body["source"] == "fallback"
    inp = GenerationInput.for_user(user=user, for_date=kst_today(), generator=LocalProvider().generator)
    assert body["fortune"] == LocalProvider().generate(inp).content.as_json()
    result = FortuneResult.objects.select_related("generation").get(user=user, for_date=kst_today())
    assert (result.source, result.generation.provider) == ("fallback", "local")
    return body

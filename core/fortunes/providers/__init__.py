from django.conf import settings

from core.fortunes.providers.base import (
    Generated,
    Provider,
    ProviderConfigError,
    ProviderError,
)

__all__ = ["Generated", "Provider", "ProviderConfigError", "ProviderError", "get_provider"]


def get_provider(*, name: str | None = None, timeout: float | None = None) -> Provider:
    """The configured provider (FORTUNE_PROVIDER). Each call makes one attempt per generate().

    Raises ProviderConfigError with an actionable message when the provider cannot work.
    """
    name = name or settings.FORTUNE_PROVIDER
    if name == "local":
        from core.fortunes.providers.local import LocalProvider

        return LocalProvider()
    if name == "openai":
        from core.fortunes.providers.openai import OpenAIProvider

        return OpenAIProvider.from_settings(timeout=timeout)
    raise ProviderConfigError(f"FORTUNE_PROVIDER must be 'openai' or 'local', got {name!r}.")

from django.conf import settings

from core.fortunes.providers.base import (
    Generated,
    Provider,
    ProviderConfigError,
    ProviderError,
)

__all__ = ["Generated", "Provider", "ProviderConfigError", "ProviderError", "get_provider"]


def get_provider(
    *, name: str | None = None, timeout: float | None = None, flex_deadline: float | None = None
) -> Provider:
    """The configured provider (FORTUNE_PROVIDER). Each call makes one attempt per generate().

    flex_deadline: the nightly run's deadline (time.monotonic()); only the nightly run passes it, so
    only the batch's synchronous requests use OPENAI_SERVICE_TIER=flex, and not in its last
    FORTUNE_FLEX_FALLBACK_MINUTES. The on-demand web path passes nothing and never uses flex.

    Raises ProviderConfigError with an actionable message when the provider cannot work.
    """
    name = name or settings.FORTUNE_PROVIDER
    if name == "local":
        from core.fortunes.providers.local import LocalProvider

        return LocalProvider()
    if name == "openai":
        from core.fortunes.providers.openai import OpenAIProvider

        return OpenAIProvider.from_settings(timeout=timeout, flex_deadline=flex_deadline)
    raise ProviderConfigError(f"FORTUNE_PROVIDER must be 'openai' or 'local', got {name!r}.")


def provider_warm_up() -> None:
    """Import and build the configured provider once at web start-up, so the first on-demand request
    does not spend its time budget importing the SDK. A misconfiguration is only logged here: it is
    reported to callers at first use."""
    import logging

    try:
        get_provider()
    except ProviderConfigError as exc:
        logging.getLogger("fortuna.api").warning("fortune provider not ready: %s", exc)

"""The local provider's executor: no network, so each input is generated on the calling thread (no
pool, no hand-off)."""

from core.fortunes.inputs import GenerationInput
from core.fortunes.providers import Provider, ProviderError
from core.nightly.outcomes import Outcome
from core.resilience import Attempted


class InlineExecutor:
    inline = True
    stores = False

    def __init__(self, *, provider: Provider) -> None:
        self._generate = provider.generate

    def submit(self, digest: str, inp: GenerationInput, user_ids: list[int]) -> Attempted:
        # No LLM behind it, so no LLM request is counted.
        try:
            return Attempted(generated=self._generate(inp), error=None, attempts=0)
        except ProviderError as exc:
            return Attempted(generated=None, error=exc, attempts=0)

    def results(self, *, timeout: float, gather: float = 0.0) -> list[tuple[str, Outcome]]:
        return []

    def close(self) -> None:
        pass

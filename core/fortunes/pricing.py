"""What a generation costs: USD per 1M tokens per model and tier (settings.FORTUNE_PRICES)."""

from decimal import Decimal
from enum import StrEnum

from django.conf import settings

PRICE_UNKNOWN = (
    "No price for model {model!r} on the {tier} tier: add '{model}:{tier}=INPUT/OUTPUT' (USD per 1M tokens) "
    "to FORTUNE_PRICES."
)
_PER_TOKEN = Decimal(1_000_000)
_QUANTUM = Decimal("0.000001")


class Tier(StrEnum):
    STANDARD = "standard"  # synchronous, default service tier
    BATCH = "batch"        # the Batch API
    FLEX = "flex"          # synchronous with service_tier="flex"


class PriceUnknown(Exception):
    pass


def price_get(*, model: str, tier: Tier | str) -> tuple[Decimal, Decimal]:
    """(input, output) USD per 1M tokens; raises PriceUnknown saying which setting to add."""
    tier = Tier(tier)
    try:
        return settings.FORTUNE_PRICES[model][tier.value]
    except KeyError:
        raise PriceUnknown(PRICE_UNKNOWN.format(model=model, tier=tier.value)) from None


def cost_estimate(*, model: str, tier: Tier | str, tokens_in: int, tokens_out: int) -> Decimal:
    """Estimated USD for these tokens. No tokens cost nothing, whatever the model (the local provider)."""
    if not tokens_in and not tokens_out:
        return Decimal(0).quantize(_QUANTUM)
    price_in, price_out = price_get(model=model, tier=tier)
    return ((Decimal(tokens_in) * price_in + Decimal(tokens_out) * price_out) / _PER_TOKEN).quantize(_QUANTUM)

"""What a generation costs: USD per 1M tokens per model and tier (settings.FORTUNE_PRICES)."""

from dataclasses import dataclass
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


# NightlyRun.cost_by_path keys, and the tier each path is billed at.
PATH_TIERS = {"batch_api": Tier.BATCH, "flex": Tier.FLEX, "standard": Tier.STANDARD}


@dataclass(slots=True)
class PathUsage:
    requests: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


def cost_paid(*, model: str, usage: dict[str, PathUsage]) -> Decimal:
    """What these paths' tokens cost, each at its own tier (PATH_TIERS)."""
    return sum((cost_estimate(model=model, tier=PATH_TIERS[path], tokens_in=used.tokens_in, tokens_out=used.tokens_out)
                for path, used in usage.items()), Decimal(0)).quantize(_QUANTUM)


def path_usage_from(*, cost_by_path: dict, path: str) -> PathUsage:
    """One path's usage back from a NightlyRun.cost_by_path (empty when the run has none)."""
    entry = cost_by_path.get(path) or {}
    return PathUsage(requests=entry.get("requests", 0), tokens_in=entry.get("tokens_in", 0),
                     tokens_out=entry.get("tokens_out", 0))


def cost_by_path(*, model: str, usage: dict[str, PathUsage]) -> dict:
    """NightlyRun.cost_by_path: per path (PATH_TIERS) its requests, tokens and estimated cost, then what the
    same tokens would cost all on the standard tier ("standard_equivalent") and the "saving". Decimals
    as strings (JSON)."""
    result: dict = {}
    paid = standard = Decimal(0)
    for path, tier in PATH_TIERS.items():
        used = usage.get(path, PathUsage())
        cost = cost_estimate(model=model, tier=tier, tokens_in=used.tokens_in, tokens_out=used.tokens_out)
        paid += cost
        standard += cost_estimate(model=model, tier=Tier.STANDARD, tokens_in=used.tokens_in, tokens_out=used.tokens_out)
        result[path] = {"requests": used.requests, "tokens_in": used.tokens_in, "tokens_out": used.tokens_out,
                        "cost": str(cost)}
    result["standard_equivalent"] = str(standard)
    result["saving"] = str(standard - paid)
    return result

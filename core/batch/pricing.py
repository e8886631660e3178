"""What a run's tokens cost, from the configured per-million-token prices."""

from decimal import Decimal

from django.conf import settings


def batch_cost(*, tokens_in: int, tokens_out: int) -> Decimal:
    cost = (Decimal(tokens_in) * settings.FORTUNE_PRICE_INPUT_PER_M
            + Decimal(tokens_out) * settings.FORTUNE_PRICE_OUTPUT_PER_M) / Decimal(1_000_000)
    return cost.quantize(Decimal("0.000001"))

"""System checks for settings that are valid on their own but wrong together: `manage.py check` and
the pre-deploy `migrate` fail on them, instead of the 22:00 batch refusing to run."""

from django.conf import settings
from django.core.checks import Error, register

from core.fortunes.pricing import PriceUnknown, Tier, price_get

PRICE_HINT = "Or set OPENAI_MODEL to a model FORTUNE_PRICES has a price for (the batch refuses to run without one)."


@register()
def fortune_prices_check(app_configs, **kwargs) -> list[Error]:
    """Every tier the batch would use with OPENAI_MODEL has a price (the batch checks the same before a run)."""
    if settings.FORTUNE_PROVIDER != "openai":
        return []
    tiers = [Tier.STANDARD]
    if settings.OPENAI_SERVICE_TIER == "flex":
        tiers.append(Tier.FLEX)
    if settings.FORTUNE_BATCH_AHEAD:
        tiers.append(Tier.BATCH)
    errors = []
    for tier in tiers:
        try:
            price_get(model=settings.OPENAI_MODEL, tier=tier)
        except PriceUnknown as exc:
            errors.append(Error(f"OPENAI_MODEL: {exc}", hint=PRICE_HINT, id="fortuna.E001"))
    return errors

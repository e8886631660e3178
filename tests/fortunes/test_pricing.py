import subprocess
import sys
from decimal import Decimal

import pytest

from core.fortunes.pricing import PRICE_UNKNOWN, PriceUnknown, Tier, cost_estimate, price_get
from tests.fortuna_api.test_settings import ROOT, start


def test_defaults_are_the_list_prices_with_batch_and_flex_at_half():
    assert price_get(model="gpt-4o-mini", tier=Tier.STANDARD) == (Decimal("0.15"), Decimal("0.60"))
    for tier in (Tier.BATCH, Tier.FLEX):
        assert price_get(model="gpt-4o-mini", tier=tier) == (Decimal("0.075"), Decimal("0.30"))
        assert price_get(model="gpt-4.1-mini", tier=tier) == (Decimal("0.20"), Decimal("0.80"))
    assert price_get(model="gpt-4.1-mini", tier="standard") == (Decimal("0.40"), Decimal("1.60"))


def test_cost_is_tokens_times_price_per_million():
    cost = cost_estimate(model="gpt-4o-mini", tier=Tier.STANDARD, tokens_in=2_000_000, tokens_out=1_000_000)
    assert cost == Decimal("0.90")
    assert cost_estimate(model="gpt-4o-mini", tier=Tier.BATCH, tokens_in=2_000_000, tokens_out=1_000_000) == cost / 2


def test_an_unknown_model_names_the_setting_to_add():
    with pytest.raises(PriceUnknown) as caught:
        cost_estimate(model="gpt-9", tier=Tier.FLEX, tokens_in=1, tokens_out=1)
    assert str(caught.value) == PRICE_UNKNOWN.format(model="gpt-9", tier="flex")
    assert cost_estimate(model="saju-rules-v1", tier=Tier.STANDARD, tokens_in=0, tokens_out=0) == 0


def test_the_environment_overrides_and_adds_prices():
    probe = ("import django; django.setup(); from django.conf import settings as s; "
             "print(s.FORTUNE_PRICES['gpt-4o-mini']['flex'], s.FORTUNE_PRICES['gpt-5-mini']['standard'])")
    env = {"DJANGO_SETTINGS_MODULE": "fortuna_api.settings", "DEBUG": "1", "PATH": "/usr/bin:/bin",
           "FORTUNE_PRICES": "gpt-4o-mini:flex=0.1/0.2, gpt-5-mini:standard=0.25/2.00"}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(Decimal('0.1'),", "Decimal('0.2'))", "(Decimal('0.25'),", "Decimal('2.00'))"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"FORTUNE_PRICES": "gpt-4o-mini=0.1/0.2"}, "FORTUNE_PRICES: 'gpt-4o-mini=0.1/0.2' is not a price"),
    ({"FORTUNE_PRICES": "gpt-4o-mini:cheap=0.1/0.2"}, "TIER is one of standard, batch, flex"),
    ({"FORTUNE_PRICES": "gpt-4o-mini:batch=-1/0.2"}, "is not a price"),
    ({"FORTUNE_PRICES": "gpt-4o-mini:batch=0.1"}, "is not a price"),
    ({"OPENAI_SERVICE_TIER": "priority"}, "OPENAI_SERVICE_TIER must be one of default, flex"),
    ({"FORTUNE_FLEX_FALLBACK_MINUTES": "soon"}, "FORTUNE_FLEX_FALLBACK_MINUTES must be a whole number"),
    ({"FORTUNE_BATCH_AHEAD": "maybe"}, "FORTUNE_BATCH_AHEAD must be true or false"),
    ({"FORTUNE_BATCH_CANCEL_WAIT_SECONDS": "7200"}, "FORTUNE_BATCH_CANCEL_WAIT_SECONDS must be between 0 and 3600"),
])
def test_bad_batch_api_settings_refuse_to_start(overrides, message):
    result = start(**overrides)
    assert result.returncode != 0
    assert message in result.stderr


def test_cost_by_path_adds_up_and_shows_the_saving_against_all_standard():
    from core.fortunes.pricing import PathUsage, cost_by_path

    usage = {"batch_api": PathUsage(requests=10, tokens_in=1_000_000, tokens_out=0),
             "standard": PathUsage(requests=2, tokens_in=0, tokens_out=1_000_000)}
    paths = cost_by_path(model="gpt-4o-mini", usage=usage)
    assert paths["batch_api"] == {"requests": 10, "tokens_in": 1_000_000, "tokens_out": 0, "cost": "0.075000"}
    assert paths["flex"] == {"requests": 0, "tokens_in": 0, "tokens_out": 0, "cost": "0.000000"}
    assert paths["standard"]["cost"] == "0.600000"
    assert (paths["standard_equivalent"], paths["saving"]) == ("0.750000", "0.075000")

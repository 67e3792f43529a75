"""Prices as OpenAI bills them: per service tier, with cached input, cache writes and
long-context rates, from the shipped table or a file of your own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import fleetgate as fg
from fleetgate.config import PriceSettings
from fleetgate.prices import ModelPrice, PriceTable, default_prices, price_tier

TABLE = """
batch_discount = 0.5

[models."m-write"]
input = 4.00
cached_input = 0.40
cache_write = 5.00
output = 20.00
long_context = { above = 1000, input = 8.00, cached_input = 0.80, cache_write = 10.00, output = 30.00 }
flex = { input = 2.00, cached_input = 0.20, output = 10.00 }
priority = { input = 8.00, cached_input = 0.80, output = 40.00, long_context = { above = 1000, input = 16.00, output = 60.00 } }

[models."m-plain"]
input = 1.00
output = 2.00
"""


@pytest.fixture
def table(tmp_path: Path) -> PriceTable:
    path = tmp_path / "prices.toml"
    path.write_text(TABLE)
    return PriceTable.load(path)


def test_tier_names_price_as_openai_bills_them() -> None:
    assert [price_tier(t) for t in (None, "auto", "default", "scale", "flex", "priority", "fast", "batch")] == [
        "default", "default", "default", "default", "flex", "priority", "priority", "batch"]


def test_usage_is_priced_at_the_tier_that_served_it(table: PriceTable) -> None:
    usage = {"input_tokens": 500, "output_tokens": 100,
             "input_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 100}}
    # 200 plain input, 200 cached, 100 written, 100 output
    standard = (200 * 4.00 + 200 * 0.40 + 100 * 5.00 + 100 * 20.00) / 1e6
    assert table.cost("m-write", usage) == pytest.approx(standard)
    assert table.cost("m-write", usage, tier="default") == pytest.approx(standard)
    assert table.cost("m-write", usage, tier="scale") == pytest.approx(standard)
    # flex lists no cache-write rate: a write is billed as input there
    assert table.cost("m-write", usage, tier="flex") == pytest.approx((300 * 2.00 + 200 * 0.20 + 100 * 10.00) / 1e6)
    assert table.cost("m-write", usage, tier="fast") == table.cost("m-write", usage, tier="priority")
    assert table.cost("m-write", usage, tier="priority") == pytest.approx((300 * 8.00 + 200 * 0.80 + 100 * 40.00) / 1e6)
    assert table.cost("m-write", usage, batch=True) == pytest.approx(standard / 2)


def test_long_prompts_take_the_long_context_rates_of_their_tier(table: PriceTable) -> None:
    usage = {"prompt_tokens": 1500, "completion_tokens": 10}
    assert table.cost("m-write", usage) == pytest.approx((1500 * 8.00 + 10 * 30.00) / 1e6)
    assert table.cost("m-write", usage, tier="priority") == pytest.approx((1500 * 16.00 + 10 * 60.00) / 1e6)
    assert table.cost("m-write", {"prompt_tokens": 1000, "completion_tokens": 10}) == pytest.approx(
        (1000 * 4.00 + 10 * 20.00) / 1e6)


def test_tiers_a_model_does_not_list_are_derived(table: PriceTable) -> None:
    price = table.price("m-plain")
    assert price is not None
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000}
    standard = (1000 * 1.00 + 1000 * 2.00) / 1e6
    assert table.cost("m-plain", usage, tier="priority") == pytest.approx(standard)  # served at standard
    assert table.cost("m-plain", usage, tier="flex") == pytest.approx(standard / 2)  # flex is priced as batch
    assert table.cost("m-plain", usage, batch=True) == pytest.approx(standard / 2)
    # a model with no cached rate bills cached tokens as input
    assert table.cost("m-plain", {**usage, "prompt_tokens_details": {"cached_tokens": 500}}) == pytest.approx(standard)


def test_the_worst_case_covers_cache_writes_and_long_context(table: PriceTable) -> None:
    price = table.price("m-write-2026-01-01")  # a snapshot takes its family's price
    assert price is not None
    assert price.worst(800, 100) == pytest.approx((800 * 5.00 + 100 * 20.00) / 1e6)
    assert price.worst(2000, 100) == pytest.approx((2000 * 10.00 + 100 * 30.00) / 1e6)
    assert price.worst(800, 100, tier="flex") == pytest.approx((800 * 2.00 + 100 * 10.00) / 1e6)
    for prompt in (0, 10, 999, 1000, 1001, 5000):
        for cached in (0, prompt // 2, prompt):
            for written in (0, (prompt - cached) // 2, prompt - cached):
                for tier in ("default", "flex", "priority", "batch"):
                    assert price.dollars(prompt, 100, cached, written, tier=tier) <= price.worst(prompt, 100, tier=tier) + 1e-12


def test_a_model_priced_in_code_gets_every_tier() -> None:
    price = ModelPrice(2.00, 0.50, 8.00)
    assert price.dollars(1000, 1000, tier="batch") == pytest.approx(price.dollars(1000, 1000) / 2)
    assert price.worst(1000, 0) == pytest.approx(2000 / 1e6)


def test_settings_override_the_shipped_batch_discount_for_every_model() -> None:
    table = PriceTable.from_settings(PriceSettings(batch_discount=0.25))
    shipped = default_prices()
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000}
    model = "gpt-4.1-mini"
    assert table.cost(model, usage, batch=True) == pytest.approx((table.cost(model, usage) or 0) * 0.25)
    assert shipped.cost(model, usage) == table.cost(model, usage)


def test_a_bad_tier_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[models."m"]\ninput = 1.0\nflex = { input = "cheap" }\n')
    with pytest.raises(fg.ConfigError, match=r'model "m", field "flex.input"'):
        PriceTable.load(path)


WRITES = """
[models."m-write"]
input = 4.00
cached_input = 0.40
cache_write = 5.00
output = 20.00
"""


def test_cache_writes_are_reserved_and_settled_as_billed(tmp_path: Path) -> None:
    """A model that bills cache writes: the first long prompt writes its prefix (dearer than
    input), the next ones read it; the budget's worst case covers the write, and what the
    fleet records equals what upstream billed."""
    from fleetgate.testing import FakeOpenAI
    from fleetgate.testing.fake_openai import FakeConfig

    prices = tmp_path / "prices.toml"
    prices.write_text(WRITES)
    prefix = "Policy handbook. " * 400  # about 1,700 tokens, shared by every call
    with FakeOpenAI(FakeConfig(prices_file=prices)) as fake:
        gate = fg.Gateway(base_url=fake.base_url, prices={"file": str(prices)},
                          budgets={"limits": [{"dollars": 100.0}]})
        client = gate.openai(api_key="sk-fake", max_retries=0)
        reserved: list[float] = []
        reserve = gate.budgets.reserve

        def noted(estimate: Any, sc: Any) -> Any:
            hold = reserve(estimate, sc)
            reserved.append(gate.budgets.worst_case(estimate)[1])
            return hold

        gate.budgets.reserve = noted  # type: ignore[method-assign]
        for question in ("What is the refund window?", "Who approves travel?", "What is the dress code?"):
            client.chat.completions.create(model="m-write", max_tokens=50,
                                           messages=[{"role": "system", "content": prefix},
                                                     {"role": "user", "content": question}])
        charges = fake.bill()
        details = [c.usage["prompt_tokens_details"] for c in charges]
        assert details[0]["cache_write_tokens"] > 1000 and details[0]["cached_tokens"] == 0
        assert details[1]["cached_tokens"] > 1000
        for charge, worst in zip(charges, reserved):
            assert charge.dollars is not None and charge.dollars <= worst
        gate.close()
        assert dict(gate.costs())["m-write"] == pytest.approx(sum(c.dollars or 0 for c in charges))

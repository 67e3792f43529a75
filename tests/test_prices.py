"""Prices as OpenAI bills them: per service tier, with cached input, cache writes and
long-context rates, from the shipped table or a file of your own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate.cli import main as cli
from fleetgate.config import PriceSettings
from fleetgate.prices import ModelPrice, PriceTable, default_prices, price_tier
from fleetgate.testing.fake_openai import FakeOpenAI

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
    assert table.cost("m-write", usage, tier="batch") == pytest.approx(standard / 2)


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
    assert table.cost("m-plain", usage, tier="batch") == pytest.approx(standard / 2)
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
    assert table.cost(model, usage, tier="batch") == pytest.approx((table.cost(model, usage) or 0) * 0.25)
    assert shipped.cost(model, usage) == table.cost(model, usage)


def test_settings_override_the_batch_discount_of_a_file_of_your_own(table: PriceTable, tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"  # the fixture's file, whose batch_discount is 0.5
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000}
    for models in ({}, {"in-house": {"input": 1.0, "output": 2.0}}):
        ours = PriceTable.from_settings(PriceSettings.model_validate({"file": str(path), "batch_discount": 0.25,
                                                                      "models": models}))
        assert ours.batch_discount == 0.25
        for model in ("m-plain", *models):
            assert ours.cost(model, usage, tier="batch") == pytest.approx((ours.cost(model, usage) or 0) * 0.25), model
        assert ours.cost("m-plain", usage) == table.cost("m-plain", usage)


# -- the shipped table ---------------------------------------------------------------------

def test_every_shipped_model_has_its_rates_and_a_source() -> None:
    table = default_prices()
    assert table.source and table.source.startswith("https://") and table.read is not None
    for name, price in table.models.items():
        assert price.input > 0, name
        if "embedding" not in name:
            assert price.output > 0, name  # embeddings are billed on input only
        source = table.source_of(name)
        assert source is not None and "https://" in source, name
        for tier in ("default", "batch", "flex", "priority"):
            rates = price.rates(1000, tier)
            assert rates.input > 0 and (rates.cached_input is None or rates.cached_input <= rates.input), (name, tier)


def test_the_current_families_are_priced() -> None:
    table = default_prices()
    for name in ("gpt-6.2-astra", "gpt-6.2-sol", "gpt-6.1-sol", "gpt-6-luna", "gpt-5.6-sol", "gpt-5.6-terra",
                 "gpt-5.6-luna", "gpt-5.5", "gpt-5.4-mini", "gpt-5", "gpt-5-nano", "gpt-4o", "gpt-4o-mini", "o3",
                 "o4-mini", "text-embedding-3-large", "gpt-image-1"):
        assert table.price(name) is not None, name


def test_models_that_bill_cache_writes_bill_them_at_a_quarter_over_input() -> None:
    table = default_prices()
    for name in ("gpt-6.2-sol", "gpt-6-astra", "gpt-5.6-sol", "gpt-5.6-luna"):
        price = table.price(name)
        assert price is not None and price.cache_write == pytest.approx(price.input * 1.25), name
        long = price.rates(300_000)
        assert long.input == pytest.approx(price.input * 2) and long.output == pytest.approx(price.output * 1.5)
        assert price.rates(1000, "priority").input == pytest.approx(price.input * 2)
    assert table.price("gpt-4.1") is not None and table.price("gpt-4.1").cache_write is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("model", "priced_as"), [
    ("gpt-5.1-codex-2025-11-13", "gpt-5.1-codex"),
    ("gpt-5.1-codex-mini", "gpt-5.1-codex-mini"),  # not gpt-5.1, which costs five times more
    ("o4-mini-deep-research-2025-06-26", "o4-mini-deep-research"),  # not o4-mini
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),  # not gpt-4o
    ("gpt-4o-2024-05-13", "gpt-4o-2024-05-13"),  # a snapshot that kept its own price
    ("gpt-4o-2024-11-20", "gpt-4o"),
    ("gpt-4-0613", "gpt-4"),
    ("gpt-5.6-sol-2026-07-09", "gpt-5.6-sol"),
    ("gpt-image-1-mini", "gpt-image-1-mini"),
    ("ft:gpt-4.1-mini:acme::AbC123", "ft:gpt-4.1-mini"),  # fine-tuned inference costs more
    ("ft:gpt-4o-2024-08-06:acme:support:AbC123", "ft:gpt-4o"),
    ("ft:gpt-5.4-mini:acme::AbC123", "gpt-5.4-mini"),  # no fine-tuned price listed: the base's
])
def test_snapshots_and_fine_tunes_resolve_to_their_own_family(model: str, priced_as: str) -> None:
    assert default_prices().priced_as(model) == priced_as


def test_a_name_that_only_starts_like_a_listed_model_has_no_price() -> None:
    table = default_prices()
    for name in ("gpt-4o-realtime-preview", "gpt-4o-mini-tts", "gpt-5.6-sol-mini", "gpt-4.1-mini-turbo", "ft:nothing"):
        assert table.priced_as(name) is None and table.price(name) is None, name


def test_a_fine_tune_costs_what_its_listing_says() -> None:
    table = default_prices()
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 1_000_000}
    assert table.cost("ft:gpt-4.1-mini:acme::x", usage) == pytest.approx(0.80 + 3.20)
    assert table.cost("gpt-4.1-mini", usage) == pytest.approx(0.40 + 1.60)


def test_prices_of_the_config_name_their_source(tmp_path: Path) -> None:
    table = PriceTable.from_settings(PriceSettings.model_validate(
        {"models": {"in-house": {"input": 1.0, "output": 2.0}, "gpt-4.1": {"input": 1.0, "output": 4.0,
                                                                           "source": "our contract"}}}))
    assert table.source_of("in-house") == "[prices.models]" and table.source_of("gpt-4.1") == "our contract"
    assert table.source_of("gpt-4o") == default_prices().source
    path = tmp_path / "prices.toml"
    path.write_text('[models."m"]\ninput = 1.0\noutput = 2.0\n')
    assert PriceTable.load(path).source_of("m") == str(path)  # a file that names no source is its own


# -- fleetgate prices ------------------------------------------------------------------------

def prices_cli(*args: str) -> list[str]:
    result = CliRunner().invoke(cli, ["prices", *args], env={"FLEETGATE_ENV": None})
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_fleetgate_prices_prints_each_model_at_each_tier_with_its_source() -> None:
    lines = prices_cli()
    assert lines[0] == ("prices: https://developers.openai.com/api/docs/pricing, read 2026-12-06 "
                        "(dollars per 1M tokens; – : billed as input)")
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 4 * len(default_prices().models)
    sol = [r for r in rows if r[0] == "gpt-6.2-sol"]
    assert [r[1:6] for r in sol] == [["default", "2.00", "0.10", "2.50", "10.00"],
                                     ["batch", "1.00", "0.05", "1.25", "5.00"],
                                     ["flex", "1.00", "0.05", "1.25", "5.00"],
                                     ["priority", "4.00", "0.20", "5.00", "20.00"]]
    assert sol[0][6:11] == ["above", "272000:", "4.00", "/", "0.20"] and sol[0][-1].endswith("gpt-6.2-sol]")
    assert ["gpt-4.1", "default", "2.00", "0.50", "–", "8.00"] in rows  # no cache-write charge
    assert ["text-embedding-3-large", "batch", "0.065", "–", "–", "0.00"] in rows


def test_fleetgate_prices_shows_the_config_table_and_filters(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text('[prices.models."in-house-7b"]\ninput = 0.30\noutput = 0.60\n'
                    'priority = { input = 0.90, output = 1.80 }\n')
    lines = prices_cli("--config", str(path), "--model", "in-house-*", "--tier", "priority", "--tier", "default")
    assert [line.split() for line in lines[2:]] == [
        ["in-house-7b", "default", "0.30", "–", "–", "0.60", "[source:", "[prices.models]]"],
        ["in-house-7b", "priority", "0.90", "–", "–", "1.80"]]
    assert [line.split()[:2] for line in prices_cli("--model", "ft:gpt-4o-2024-08-06:acme::x", "--tier", "default")[2:]
            ] == [["ft:gpt-4o", "default"]]  # the entry a fine-tune is priced as


def test_the_command_offers_every_tier() -> None:
    from fleetgate.cli.prices import TIERS as OFFERED
    from fleetgate.prices import TIERS

    assert OFFERED == TIERS


def test_fleetgate_prices_says_what_to_do_about_an_unpriced_model() -> None:
    result = CliRunner().invoke(cli, ["prices", "--model", "gpt-4o-realtime-preview"])
    assert result.exit_code == 1
    assert "no priced model matches 'gpt-4o-realtime-preview'" in result.output
    assert '[prices.models."gpt-4o-realtime-preview"]' in result.output


def test_the_fake_lists_the_models_of_the_shipped_table(fake_openai: FakeOpenAI) -> None:
    import openai

    listed = {m.id for m in openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake").models.list()}
    shipped = {name for name in default_prices().models if not name.startswith("ft:")}
    assert listed >= shipped and {"gpt-6.2-sol", "gpt-5.6-terra", "text-embedding-3-large", "gpt-image-1"} <= listed
    assert not any(name.startswith("ft:") for name in listed)  # those entries price fine-tunes



@pytest.mark.parametrize("mode", ["sync", "async"])
def test_current_models_pass_a_budget_and_are_recorded_as_billed(fake_openai: FakeOpenAI, mode: str) -> None:
    """Calls of models the table once lacked are no longer refused under a budget, and the
    fleet records what upstream billed for each."""
    import asyncio

    gate = fg.Gateway(base_url=fake_openai.base_url, budgets={"limits": [{"dollars": 100.0}]})
    chats = ("gpt-6.2-sol", "gpt-5.6-terra", "gpt-5.4-mini-2026-03-17", "gpt-4o", "o4-mini")
    messages = [{"role": "user", "content": "Summarise the refund policy in one line."}]

    async def send_async() -> None:
        client = gate.async_openai(api_key="sk-fake", max_retries=0)
        for model in chats:
            await client.chat.completions.create(model=model, messages=messages, max_tokens=40)
        await client.embeddings.create(model="text-embedding-3-large", input="refund policy")

    if mode == "async":
        asyncio.run(send_async())
    else:
        client = gate.openai(api_key="sk-fake", max_retries=0)
        for model in chats:
            client.chat.completions.create(model=model, messages=messages, max_tokens=40)
        client.embeddings.create(model="text-embedding-3-large", input="refund policy")
    billed: dict[str, float] = {}
    for charge in fake_openai.bill():
        assert charge.dollars is not None and charge.dollars > 0, charge
        billed[charge.model] = billed.get(charge.model, 0.0) + charge.dollars
    recorded = dict(gate.costs())
    gate.close()
    assert set(recorded) == set(billed) == {*chats, "text-embedding-3-large"}
    for model, dollars in billed.items():
        assert recorded[model] == pytest.approx(dollars), model


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

        def noted(estimate: Any, sc: Any, **options: Any) -> Any:
            hold = reserve(estimate, sc, **options)
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

"""Warm start: a gateway loads what its first call needs in the background as it starts;
ready() waits for it and raises what failed to load; a call made before it is over waits
for it outside its deadline."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import fleetgate as fg
from fleetgate.cache import LocalEmbedder
from fleetgate.errors import ConfigError
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI
from tests.polling import until

MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "How do I reset my password?"}]


class HeldEmbedder(LocalEmbedder):
    """The local embedder, whose loading waits until the test lets it go on."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.loading = threading.Event()

    def load(self) -> None:
        self.loading.set()
        assert self.release.wait(60), "the test never let the embedder load"
        super().load()


def semantic(fake: FakeOpenAI, embedder: Any, **overrides: Any) -> fg.Gateway:
    return fg.Gateway(base_url=fake.base_url, embedder=embedder, cache={"enabled": True, "semantic": {"enabled": True}},
                      models={MODEL: fg.QuotaLimits(requests_per_minute=6_000, tokens_per_minute=1_000_000)},
                      **overrides)


def test_ready_loads_the_encodings_of_the_configured_models() -> None:
    with fg.Gateway(models={"gpt-4": fg.QuotaLimits(requests_per_minute=60)}) as gate:
        assert gate.ready(timeout=60) is True
        assert gate.warmup.encodings == ["cl100k_base", "o200k_base"]
        assert asyncio.run(gate.ready_async(timeout=60)) is True
    with fg.Gateway() as plain:
        assert plain.ready(timeout=60) and plain.warmup.encodings == ["o200k_base"], "o200k_base always"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.fake_openai(config=FakeConfig())
def test_a_call_made_before_the_gateway_is_warm_gets_its_whole_deadline_after(fake_openai: FakeOpenAI,
                                                                               kind: str) -> None:
    """The embedder loads for longer than the call's deadline; the call waits for it, then
    is served: its deadline started once the gateway was warm."""
    embedder = HeldEmbedder()
    with semantic(fake_openai, embedder) as gate:
        assert embedder.loading.wait(60)
        assert gate.ready(timeout=0) is False
        assert asyncio.run(gate.ready_async(timeout=0)) is False
        outcome: list[Any] = []

        async def ask_async() -> Any:
            async with gate.scope(deadline=2.0):
                return await gate.async_openai(api_key="sk-fake", max_retries=0).chat.completions.create(
                    model=MODEL, messages=MSG)

        def call() -> None:
            try:
                if kind == "async":
                    outcome.append(asyncio.run(ask_async()))
                    return
                with gate.scope(deadline=2.0):
                    client = gate.openai(api_key="sk-fake", max_retries=0)
                    outcome.append(client.chat.completions.create(model=MODEL, messages=MSG))
            except Exception as e:  # noqa: BLE001 - judged below
                outcome.append(e)

        caller = threading.Thread(target=call)
        caller.start()
        until(lambda: gate.stats["warm_waits"] == 1)
        time.sleep(2.0)  # past the deadline, had it started with the call
        assert not outcome, "the call waits for the warm-up"
        embedder.release.set()
        caller.join(60)
        assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
        assert gate.ready(timeout=60) is True
        assert gate.stats["refused"] == 0 and fake_openai.counters(MODEL).requests == 1


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_failed_load_is_raised_from_ready_and_logged_once(fake_openai: FakeOpenAI, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "missing.onnx"
    with caplog.at_level(logging.ERROR, logger="fleetgate"), semantic(fake_openai, LocalEmbedder(missing)) as gate:
        with pytest.raises(ConfigError, match="does not exist"):
            gate.ready(timeout=60)
        with pytest.raises(ConfigError, match="does not exist"):
            asyncio.run(gate.ready_async(timeout=60))
    said = [r.getMessage() for r in caplog.records if "warming up failed" in r.getMessage()]
    assert len(said) == 1 and str(missing) in said[0], said



def _count_in_child(gate: fg.Gateway) -> None:
    from fleetgate._core import count_tokens

    assert gate.ready(timeout=60) and count_tokens(MODEL, "hello") == 1


def test_a_process_forked_right_after_gateway_is_ready() -> None:
    """A fork waits for a warm-up still loading: the child never inherits a half-done load."""
    import multiprocessing

    with fg.Gateway() as gate:
        child = multiprocessing.get_context("fork").Process(target=_count_in_child, args=(gate,))
        child.start()
        child.join(120)
        assert child.exitcode == 0

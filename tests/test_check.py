"""Environment presets (FLEETGATE_ENV) and ``fleetgate check``, the pre-deploy command."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from pathlib import Path

import openai
import pytest
import redis
from click.testing import CliRunner, Result

import fleetgate as fg
from fleetgate.cli import main as cli
from fleetgate.config import GatewayConfig
from fleetgate.seen_models import SeenModels, recent
from fleetgate.testing.fake_openai import FakeOpenAI
from tests.polling import until

MSG = [{"role": "user", "content": "hi"}]


# -- environments ---------------------------------------------------------------------------

def test_each_environment_has_its_preset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_ENV", "dev")
    dev = GatewayConfig()
    assert dev.env == "development" and dev.model_override == "gpt-4.1-nano" and dev.max_upstream_retries == 1
    assert [(b.scope, b.dollars) for b in dev.budgets.limits] == [("global", 5.0)]
    assert dev.logging.level == "debug" and not dev.modes.auto
    monkeypatch.setenv("FLEETGATE_ENV", "staging")
    staging = GatewayConfig()
    assert staging.budgets.limits[0].dollars == 50.0 and staging.max_upstream_retries == 2 and staging.modes.auto
    monkeypatch.setenv("FLEETGATE_ENV", "prod")
    prod = GatewayConfig()
    assert prod.env == "production" and prod.model_override == "" and prod.logging.level == "warning"
    assert prod.budgets.limits == [] and prod.budgets.record_spend and prod.modes.auto
    monkeypatch.delenv("FLEETGATE_ENV")
    assert GatewayConfig().env is None and GatewayConfig().max_upstream_retries == 3


def test_the_config_file_wins_over_the_preset_key_by_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text('env = "development"\nmodel_override = ""\n[budgets]\ntimezone = "Europe/Berlin"\n'
                    '[logging]\nlevel = "info"\n')
    config = GatewayConfig.from_toml(path)
    assert config.env == "development" and config.model_override == ""
    assert config.budgets.timezone == "Europe/Berlin" and config.budgets.limits[0].dollars == 5.0  # merged
    assert config.logging.level == "info" and config.logging.requests is True
    monkeypatch.setenv("FLEETGATE_ENV", "staging")  # the variable wins over the file's env
    assert GatewayConfig.from_toml(path).budgets.limits[0].dollars == 50.0


def test_an_unknown_environment_names_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETGATE_ENV", "qa")
    with pytest.raises(ValueError, match="'development', 'staging' or 'production'"):
        GatewayConfig()


def test_development_sends_every_call_to_its_small_model_and_logs_each(
        fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("FLEETGATE_ENV", "development")
    gate = fg.Gateway(base_url=fake_openai.base_url)
    with caplog.at_level(logging.NOTSET):
        answer = gate.openai(api_key="sk-fake").chat.completions.create(model="gpt-4.1", messages=MSG)
    assert answer.model == "gpt-4.1-nano" and fake_openai.counters("gpt-4.1").requests == 0
    assert logging.getLogger("fleetgate").level == logging.DEBUG
    assert any(r.name == "fleetgate.requests" for r in caplog.records)
    logging.getLogger("fleetgate").setLevel(logging.NOTSET)
    logging.getLogger("fleetgate.requests").setLevel(logging.NOTSET)


# -- fleetgate check ---------------------------------------------------------------------------

def good_config(tmp_path: Path, redis_url: str, base_url: str, extra: str = "") -> Path:
    path = tmp_path / "fleetgate.toml"
    path.write_text(f'env = "production"\nredis_url = "{redis_url}"\nbase_url = "{base_url}"\n{extra}\n'
                    '[[budgets.limits]]\nscope = "global"\ndollars = 100\n')
    return path


def check(path: Path | None, *args: str, key: str = "sk-fake") -> Result:
    return CliRunner().invoke(cli, ["check", *(["--config", str(path)] if path else []), *args],
                              env={"OPENAI_API_KEY": key, "FLEETGATE_ENV": None, "FLEETGATE_REDIS_URL": None})


def fails(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("FAIL")]


@pytest.fixture
def fleet_redis(redis_url: str) -> str:
    """A database of the test Redis of this test's alone: the models other tests' gateways
    gated are no fleet's this test checks."""
    url = redis_url.rsplit("/", 1)[0] + "/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


def test_a_sound_deployment_passes_every_check(tmp_path: Path, fleet_redis: str, fake_openai: FakeOpenAI) -> None:
    path = good_config(tmp_path, fleet_redis, fake_openai.base_url, '[[routing.tiers]]\nname = "small"\n'
                       'model = "gpt-6-luna"\n[[routing.tiers]]\nname = "big"\nmodel = "gpt-6.2-sol"\n')
    with fg.Gateway.from_config(path) as gate:  # the fleet gated priced models only
        gate.openai(api_key="sk-fake").chat.completions.create(model="gpt-4.1-mini-2025-04-14", messages=MSG)
        assert gate.seen_models.flush()
    result = check(path)
    assert result.exit_code == 0, result.output
    areas = [line.split()[1] for line in result.output.splitlines()]
    assert areas == ["secrets:", "config:", "redis:", "upstream:", "budgets:", "prices:", "metrics:"]
    assert "(production)" in result.output and "global $100/day" in result.output
    assert ("ok    prices: every configured model and every one the fleet gated in the last 7 days has a price ("
            in result.output)


def warnings(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("WARN")]


def test_a_configured_model_with_no_price_is_named_with_where(tmp_path: Path, fleet_redis: str,
                                                              fake_openai: FakeOpenAI) -> None:
    path = good_config(tmp_path, fleet_redis, fake_openai.base_url,
                       '[fallback.models]\n"gpt-4.1" = "gpt-4.1-minii"\n'
                       '[routing.rollouts.voice]\nmodel = "gpt-4.1"\ncanary = { model = "in-house-7b" }\n')
    result = check(path)
    assert result.exit_code == 1 and not fails(result), result.output
    todo = "(`fleetgate prices` shows the table), or check the name"
    assert warnings(result) == [
        "WARN  prices: 'gpt-4.1-minii', named in [fallback] models \"gpt-4.1\" →, has no price: a budget refuses "
        'their calls ([budgets] unpriced = "refuse"); price it under [prices.models."gpt-4.1-minii"] ' + todo,
        "WARN  prices: 'in-house-7b', named in [routing.rollouts.\"voice\".canary], has no price: a budget refuses "
        'their calls ([budgets] unpriced = "refuse"); price it under [prices.models."in-house-7b"] ' + todo]
    # priced in the config, or let through uncounted: no warning
    priced = good_config(tmp_path, fleet_redis, fake_openai.base_url,
                         '[routing.rollouts.voice]\nmodel = "gpt-4.1"\ncanary = { model = "in-house-7b" }\n'
                         '[prices.models."in-house-7b"]\ninput = 0.1\noutput = 0.2\n')
    assert check(priced).exit_code == 0
    allowed = good_config(tmp_path, fleet_redis, fake_openai.base_url,
                          'model_override = "in-house-7b"\n[budgets]\nunpriced = "allow"\n')
    result = check(allowed)
    assert result.exit_code == 0, result.output
    assert ("ok    prices: 'in-house-7b', named in model_override, has no price: no budget counts their calls "
            '([budgets] unpriced = "allow")') in result.output


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_model_the_fleet_gated_with_no_price_is_named(tmp_path: Path, fleet_redis: str, fake_openai: FakeOpenAI,
                                                        mode: str) -> None:
    path = good_config(tmp_path, fleet_redis, fake_openai.base_url)
    before = time.time()
    with fg.Gateway.from_config(path) as gate:  # one pod refuses it under its budget...
        with pytest.raises(openai.APIStatusError, match="has no price"):
            gate.openai(api_key="sk-fake", max_retries=0).chat.completions.create(model="gpt-4o-realtime-preview",
                                                                                  messages=MSG)
        assert gate.seen_models.names() == {"gpt-4o-realtime-preview"}
        assert gate.seen_models.flush()
    with fg.Gateway(base_url=fake_openai.base_url, redis_url=fleet_redis) as pod:  # ...another, with no budget, sends it
        async def send_async() -> None:
            client = pod.async_openai(api_key="sk-fake")
            for _ in range(3):
                await client.embeddings.create(model="text-embedding-4-mini", input="hi")

        if mode == "async":
            asyncio.run(send_async())
        else:
            for _ in range(3):
                pod.openai(api_key="sk-fake").embeddings.create(model="text-embedding-4-mini", input="hi")
        assert pod.seen_models.flush()
    seen = recent(fleet_redis)
    assert set(seen) == {"gpt-4o-realtime-preview", "text-embedding-4-mini"}
    assert all(before - 1 <= at <= time.time() + 1 for at in seen.values())
    result = check(path)
    assert result.exit_code == 1 and not fails(result), result.output
    lines = warnings(result)
    assert sorted(line.split()[2] for line in lines) == ["'gpt-4o-realtime-preview',", "'text-embedding-4-mini',"]
    assert all("gated by the fleet (last noted 20" in line and "a budget refuses their calls" in line for line in lines)
    assert not recent(fleet_redis, now=time.time() + 8 * 86400)  # a week later it is no longer recent


def test_a_process_writes_each_model_it_sees_once(fleet_redis: str) -> None:
    now = [1_000_000.0]
    seen = SeenModels(fleet_redis, clock=lambda: now[0])
    seen.note("gpt-5.4")
    assert seen.flush()
    now[0] += 60
    for _ in range(3):
        seen.note("gpt-5.4")  # already noted: nothing queued, nothing written
    seen.note("gpt-5.4-mini")
    assert seen.flush()
    seen.close()
    assert recent(fleet_redis, now=now[0]) == {"gpt-5.4-mini": 1_000_060.0, "gpt-5.4": 1_000_000.0}


def test_a_bad_config_fails_with_a_line_per_mistake(tmp_path: Path) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text('max_upstream_retries = -1\n[[budgets.limits]]\ndollars = 0\n[breakers]\nwindw = 5\n')
    result = check(path)
    assert result.exit_code == 1
    lines = fails(result)
    assert len(lines) == 3, result.output
    assert f"FAIL  config: {path}: max_upstream_retries: should be greater than or equal to 0" in lines
    assert f"FAIL  config: {path}: budgets.limits[0].dollars: should be greater than 0" in lines
    assert f"FAIL  config: {path}: [breakers] windw: unknown key; did you mean `window`?" in lines


def test_a_config_that_only_fails_once_combined_fails_too(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text(f'base_url = "{fake_openai.base_url}"\n[[budgets.limits]]\ndollars = 5\n'
                    'on_exhausted = "cache_only"\n')
    assert fails(check(path)) == ['FAIL  config: a budget with on_exhausted = "cache_only" needs the cache: '
                                  'set [cache] enabled = true']


def test_redis_down_fails(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = check(good_config(tmp_path, f"redis://:hunter2@127.0.0.1:{port}", fake_openai.base_url))
    assert result.exit_code == 1
    lines = fails(result)
    assert [line.split()[1] for line in lines] == ["secrets:", "redis:"]
    assert f"cannot reach redis://:***@127.0.0.1:{port}" in lines[1] and "hunter2" not in result.output


def test_no_redis_in_production_fails(tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text(f'env = "production"\nbase_url = "{fake_openai.base_url}"\n[[budgets.limits]]\ndollars = 9\n')
    assert [line.split()[1] for line in fails(check(path))] == ["redis:"]


def test_an_unreachable_upstream_fails(tmp_path: Path, redis_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lines = fails(check(good_config(tmp_path, redis_url, f"http://127.0.0.1:{port}/v1"), "--timeout", "2"))
    assert len(lines) == 1 and lines[0].startswith(f"FAIL  upstream: cannot reach http://127.0.0.1:{port}/v1")


def test_no_api_key_fails(tmp_path: Path, redis_url: str, fake_openai: FakeOpenAI) -> None:
    lines = fails(check(good_config(tmp_path, redis_url, fake_openai.base_url), key=""))
    assert lines == ["FAIL  upstream: no API key: set OPENAI_API_KEY"]


def test_budgets_disabled_fails(tmp_path: Path, redis_url: str, fake_openai: FakeOpenAI) -> None:
    path = tmp_path / "fleetgate.toml"
    path.write_text(f'redis_url = "{redis_url}"\nbase_url = "{fake_openai.base_url}"\n')
    lines = fails(check(path))
    assert len(lines) == 1 and lines[0].startswith("FAIL  budgets: none configured")


def test_metrics_disabled_fails(tmp_path: Path, redis_url: str, fake_openai: FakeOpenAI) -> None:
    path = good_config(tmp_path, redis_url, fake_openai.base_url, "[metrics]\nenabled = false\n")
    lines = fails(check(path))
    assert len(lines) == 1 and lines[0].startswith("FAIL  metrics: disabled")


def test_a_key_in_the_config_file_fails_without_printing_it(tmp_path: Path, redis_url: str,
                                                            fake_openai: FakeOpenAI) -> None:
    key = "sk-proj-" + "Ab3dE" * 8
    path = good_config(tmp_path, redis_url, fake_openai.base_url, f'# rotated: "{key}"\n[cache.semantic]\n'
                       f'embedder = "openai:text-embedding-3-small"\napi_key = "{key}"\n')
    result = check(path)
    assert result.exit_code == 1 and key not in result.output
    lines = fails(result)
    for line in (4, 7):  # a key in a comment is in the repository too
        assert f"FAIL  secrets: {path} line {line} holds an OpenAI API key: read it from OPENAI_API_KEY instead" in lines
    assert any("[cache.semantic] api_key: unknown key" in line for line in lines)  # and no such setting exists


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_worker_notes_what_it_gates_itself(fleet_redis: str) -> None:
    seen = SeenModels(fleet_redis)
    seen.note("gpt-5.4")  # the parent's writer thread is running when it forks
    assert seen.flush()
    pid = os.fork()
    if pid == 0:  # the child: a writer and a connection of its own
        try:
            seen.note("gpt-5.4")  # a new process: noted again
            seen.note("gpt-5.4-nano")
            os._exit(0 if seen.flush(30) and seen.names() == {"gpt-5.4", "gpt-5.4-nano"} else 1)
        finally:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert set(recent(fleet_redis)) == {"gpt-5.4", "gpt-5.4-nano"}
    assert seen.names() == {"gpt-5.4"}
    seen.close()


def test_models_noted_while_redis_is_down_are_kept_and_the_outage_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    seen = SeenModels(f"redis://:hunter2@127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="fleetgate"):
        seen.note("gpt-5.4")
        until(lambda: any("cannot note the models" in r.getMessage() for r in caplog.records))
        seen.note("gpt-5.4-mini")  # tried again: still down, not logged again
        assert not seen.flush(0.2)
    warned = [r.getMessage() for r in caplog.records if "cannot note the models" in r.getMessage()]
    assert len(warned) == 1 and f"redis://:***@127.0.0.1:{port}" in warned[0] and "hunter2" not in warned[0]
    assert seen.names() == {"gpt-5.4", "gpt-5.4-mini"}
    seen.close()


def test_each_deployment_is_reached_with_its_own_key_and_its_room_shown(
        tmp_path: Path, fleet_redis: str, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetgate.testing.fake_openai import FakeConfig

    with FakeOpenAI(FakeConfig(api_key="sk-project-key-0001")) as project:
        monkeypatch.setenv("FG_CHECK_KEY", "sk-project-key-0001")
        monkeypatch.setenv("FG_CHECK_WRONG", "sk-wrong-key-0000")
        path = good_config(tmp_path, fleet_redis, fake_openai.base_url, (
            '[[deployments."gpt-4.1-mini"]]\nname = "project"\n'
            f'base_url = "{project.base_url}"\napi_key_env = "FG_CHECK_KEY"\nrequests_per_minute = 600\n'
            '[[deployments."gpt-4.1-mini"]]\nname = "stale"\npriority = 1\n'
            f'base_url = "{project.base_url}"\napi_key_env = "FG_CHECK_WRONG"\n'
            '[[budgets.limits]]\nscope = "deployment"\nname = "project"\ndollars = 25\n'))
        result = check(path)
    lines = [line for line in result.output.splitlines() if "deployment " in line]
    assert lines[0].startswith("ok    deployment gpt-4.1-mini@project: ") and "key $FG_CHECK_KEY" in lines[0]
    assert "room now 9 of 9 requests" in lines[0], lines[0]  # 600 RPM less the 1% headroom: 9 a second
    assert lines[0].endswith(", budget $25.00/day, $0.00 spent"), lines[0]
    assert lines[1].startswith("FAIL  deployment gpt-4.1-mini@stale: ") and "check $FG_CHECK_WRONG" in lines[1]
    assert "sk-wrong" not in result.output and "sk-project" not in result.output
    assert result.exit_code != 0

"""Degradation modes: entered and left by themselves under injected faults without
flapping, set by an operator for the fleet, honoured by every pod, said in each answer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import openai
import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate.cli import main as cli
from fleetgate.config import ModeSettings, ModeTrigger
from fleetgate.modes import Hysteresis, Modes, ModeStore, Signals, fleet_signals
from fleetgate.testing import RedisRig
from fleetgate.testing.fake_openai import FakeOpenAI, Fault
from tests.polling import until

MSG = [{"role": "user", "content": "How do I reset my password?"}]
PRIMARY, CHEAP = "gpt-4.1", "gpt-4.1-mini"
#: Fast judging for tests: a short window, a short dwell before leaving a mode.
FAST = {"auto": True, "window_seconds": 2.0, "min_requests": 5, "evaluate_every_seconds": 0.05,
        "exit_after_seconds": 0.3, "probe_every_seconds": 0.1}


def mode_of(raw: Any) -> str:
    return str(raw.headers.get("x-fleetgate-mode"))


# -- the automatic mode, judged alone ----------------------------------------------------------

def test_each_trigger_enters_its_mode_and_the_worst_wins() -> None:
    settings = ModeSettings(auto=True)
    for signals, expected in (
        (Signals(requests=100, error_rate=0.0, p95_seconds=1.0), "full"),
        (Signals(requests=100, error_rate=0.15, p95_seconds=1.0), "reduced"),
        (Signals(requests=100, error_rate=0.02, open_breakers=1), "reduced"),
        (Signals(budget_share=0.92), "reduced"),
        (Signals(budget_share=1.0), "cached-only"),
        (Signals(requests=100, error_rate=0.4), "cached-only"),
        (Signals(requests=100, error_rate=0.7, open_breakers=3), "static"),
        (Signals(requests=100, error_rate=0.7, isolated_breakers=1), "maintenance"),
    ):
        auto = Hysteresis(settings)
        auto.step(signals, 0.0)
        assert auto.mode == expected, signals


def test_a_signal_wavering_at_a_threshold_does_not_flap_the_mode() -> None:
    auto = Hysteresis(ModeSettings(auto=True, exit_after_seconds=30))
    changes = 0
    for tick in range(600):  # five minutes at two judgements a second
        rate = 0.27 if tick % 2 else 0.33  # around cached-only's 0.3
        changes += auto.step(Signals(requests=100, error_rate=rate), tick / 2)
    assert auto.mode == "cached-only" and changes == 1


def test_a_mode_is_left_after_its_dwell_and_one_step_at_a_time() -> None:
    auto = Hysteresis(ModeSettings(auto=True, exit_after_seconds=30))
    assert auto.step(Signals(requests=100, error_rate=0.8), 0.0) and auto.mode == "static"
    # Calmer, but still above half of cached-only's trigger: down to cached-only after the dwell.
    assert not auto.step(Signals(requests=100, error_rate=0.2), 1.0)
    assert not auto.step(Signals(requests=100, error_rate=0.2), 30.0)
    assert auto.step(Signals(requests=100, error_rate=0.2), 31.0) and auto.mode == "cached-only"
    # A relapse above half the trigger restarts the dwell.
    auto.step(Signals(requests=100, error_rate=0.01), 32.0)
    auto.step(Signals(requests=100, error_rate=0.16), 50.0)
    assert not auto.step(Signals(requests=100, error_rate=0.01), 70.0)
    assert auto.mode == "cached-only"
    assert auto.step(Signals(requests=100, error_rate=0.01), 100.0) and auto.mode == "full"


def test_a_mode_entered_on_errors_is_not_left_on_silence() -> None:
    auto = Hysteresis(ModeSettings(auto=True, exit_after_seconds=1))
    auto.step(Signals(requests=100, error_rate=0.5), 0.0)
    for t in range(1, 100):  # nothing measured: no calls went upstream
        assert not auto.step(Signals(requests=0), float(t))
    assert auto.mode == "cached-only"


# -- the automatic mode, under injected faults ------------------------------------------------

def gateway(fake: FakeOpenAI, enter: dict[str, ModeTrigger] | None = None, **config: Any) -> fg.Gateway:
    modes = {**FAST, **({"enter": enter} if enter is not None else {})}
    config.setdefault("breakers", {"enabled": False})
    return fg.Gateway(base_url=fake.base_url, modes=modes, **config)


def recording_client(gate: fg.Gateway, sent: list[dict[str, Any]]) -> openai.OpenAI:
    """A client of `gate` whose requests, as sent upstream, are kept in `sent`."""
    import httpx2

    class Recording(httpx2.HTTPTransport):
        def handle_request(self, request: httpx2.Request) -> httpx2.Response:
            sent.append(json.loads(request.content))
            return super().handle_request(request)

    http = httpx2.Client(transport=gate.transport(Recording()))
    return openai.OpenAI(api_key="sk-fake", base_url=gate.config.base_url, max_retries=0,
                         http_client=http)  # type: ignore[arg-type]


def send(client: openai.OpenAI, n: int, **create: Any) -> list[Any]:
    """`n` chat calls; the raw responses, or the errors raised."""
    out: list[Any] = []
    for _ in range(n):
        try:
            out.append(client.chat.completions.with_raw_response.create(**{"model": PRIMARY, "messages": MSG, **create}))
        except (openai.APIStatusError, fg.FleetgateError) as e:
            out.append(e)
    return out


def test_errors_enter_reduced_mode_which_serves_a_cheaper_capped_answer_and_leaves_when_they_stop(
        fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    gate = gateway(fake_openai, {"reduced": ModeTrigger(error_rate=0.2)}, fallback={"models": {PRIMARY: CHEAP}},
                   cache={"enabled": True})
    sent: list[dict[str, Any]] = []
    client = recording_client(gate, sent)
    fake_openai.set_faults([Fault(kind="error", status=500, model=PRIMARY, probability=0.5)])
    with caplog.at_level(logging.INFO, logger="fleetgate"):
        until(lambda: (send(client, 1), gate.modes.current.mode == "reduced")[1])
        fake_openai.set_faults([])
        raw = send(client, 1, max_tokens=4000)[0]
        assert mode_of(raw) == "reduced" and raw.parse().model == CHEAP
        assert sent[-1]["model"] == CHEAP and sent[-1]["max_tokens"] == gate.config.modes.reduced_max_output_tokens
        # Healthy again (the cheaper model answers): back to full after the dwell.
        until(lambda: (send(client, 1), gate.modes.current.mode == "full")[1])
    assert mode_of(send(client, 1)[0]) == "full"
    assert gate.stats["mode_reduced"] == 1 and gate.stats["mode_full"] == 1
    assert any("mode full → reduced (auto: error rate" in r.getMessage() for r in caplog.records)
    gate.close()


def test_reduced_mode_turns_optional_features_off(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, modes={"optional_features": ["suggestions"]})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    gate.modes.set("reduced", reason="load test")
    with gate.scope(feature="suggestions"), pytest.raises(fg.ServiceDegraded) as refused:
        client.chat.completions.create(model=PRIMARY, messages=MSG)
    assert refused.value.mode == "reduced" and refused.value.status_code == 503  # type: ignore[attr-defined]
    assert "optional" in str(refused.value) and "load test" in str(refused.value)
    with gate.scope(feature="support-chat"):
        assert mode_of(send(client, 1)[0]) == "reduced"


def test_more_errors_enter_cached_only_which_serves_stored_answers_and_probes_its_way_back(
        fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, {"cached-only": ModeTrigger(error_rate=0.3)}, cache={"enabled": True, "when": "always"})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    known = send(client, 1, temperature=0.7)[0]  # answered and stored while healthy
    fake_openai.set_faults([Fault(kind="error", status=503, model=PRIMARY)])
    until(lambda: (send(client, 1, messages=[{"role": "user", "content": "other"}]),
                   gate.modes.current.mode == "cached-only")[1])
    hit = client.chat.completions.with_raw_response.create(model=PRIMARY, messages=MSG, temperature=0.7)
    assert mode_of(hit) == "cached-only" and hit.headers["x-fleetgate-tier"] == "cache"
    assert hit.parse().choices[0].message.content == known.parse().choices[0].message.content
    with pytest.raises(fg.ServiceDegraded, match="no cached answer"):
        client.chat.completions.create(model=PRIMARY, messages=[{"role": "user", "content": "never asked"}])
    upstream, probes = fake_openai.counters(PRIMARY).requests, gate.stats["mode_probes"]
    send(client, 20, messages=[{"role": "user", "content": "still down?"}])
    assert gate.modes.current.mode == "cached-only"
    assert fake_openai.counters(PRIMARY).requests - upstream == gate.stats["mode_probes"] - probes < 20
    # Upstream heals; probes (not every request) find out, and the mode goes back to full.
    upstream_before = fake_openai.counters(PRIMARY).requests
    fake_openai.set_faults([])
    until(lambda: (send(client, 1, messages=[{"role": "user", "content": "x"}]), gate.modes.current.mode == "full")[1])
    assert gate.stats["mode_probes"] >= 1
    assert fake_openai.counters(PRIMARY).requests - upstream_before >= gate.config.modes.min_requests // 2
    gate.close()


def test_an_upstream_that_fails_everything_enters_static_mode(fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, {"static": ModeTrigger(error_rate=0.9)},
                   fallback={"static_answer": "We are busy; please try again."})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    fake_openai.set_faults([Fault(kind="error", status=500)])
    until(lambda: (send(client, 1), gate.modes.current.mode == "static")[1])
    answers = [r for r in send(client, 5) if not isinstance(r, Exception) and r.headers["x-fleetgate-tier"] == "static"]
    assert answers and all(mode_of(r) == "static" for r in answers)
    assert answers[0].parse().choices[0].message.content == "We are busy; please try again."
    fake_openai.set_faults([])
    until(lambda: (send(client, 1), gate.modes.current.mode == "full")[1])
    gate.close()


def test_an_isolated_breaker_enters_maintenance_whose_requests_are_answered_when_it_ends(
        fake_openai: FakeOpenAI) -> None:
    gate = gateway(fake_openai, {"maintenance": ModeTrigger(isolated_breakers=1)},
                   breakers={"enabled": True, "min_calls": 1})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    fake_openai.set_faults([Fault(kind="insufficient_quota")])
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=PRIMARY, messages=MSG)
    until(lambda: gate.modes.current.mode == "maintenance")
    fake_openai.set_faults([])  # the bill is paid
    answers: list[Any] = []
    threads = [threading.Thread(target=lambda: answers.extend(send(client, 1))) for _ in range(4)]
    for t in threads:
        t.start()
    until(lambda: gate.stats["requests"] == 5)  # all four are in, held
    assert answers == [] and fake_openai.counters(PRIMARY).requests == 1
    gate.breaker_for("/chat/completions", PRIMARY).reset()  # type: ignore[union-attr]
    for t in threads:
        t.join(timeout=30)
    assert len(answers) == 4 and all(r.status_code == 200 and mode_of(r) == "full" for r in answers)
    assert gate.modes.current.mode == "full"
    gate.close()


# -- an operator's mode --------------------------------------------------------------------------

def test_maintenance_queues_requests_sync_and_async_and_answers_them_after_it(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client, aclient = gate.openai(api_key="sk-fake"), gate.async_openai(api_key="sk-fake")
    gate.modes.set("maintenance", reason="database migration")
    answers: list[Any] = []

    async def ask() -> Any:
        return await aclient.chat.completions.with_raw_response.create(model=PRIMARY, messages=MSG)

    def ask_async() -> None:
        answers.append(asyncio.run(ask()))

    threads = [threading.Thread(target=lambda: answers.extend(send(client, 1))) for _ in range(3)]
    threads.append(threading.Thread(target=ask_async))
    for t in threads:
        t.start()
    until(lambda: gate.stats["requests"] == 4)
    assert answers == [] and fake_openai.counters(PRIMARY).requests == 0
    gate.modes.clear()
    for t in threads:
        t.join(timeout=30)
    assert len(answers) == 4 and all(r.status_code == 200 for r in answers)
    assert fake_openai.counters(PRIMARY).requests == 4


def test_a_request_whose_deadline_passes_in_maintenance_is_refused_unsent(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url)
    client = gate.openai(api_key="sk-fake")
    gate.modes.set("maintenance", for_seconds=600)
    with gate.scope(deadline=0.2), pytest.raises(fg.ServiceDegraded, match="maintenance") as refused:
        client.chat.completions.create(model=PRIMARY, messages=MSG)
    assert refused.value.retry_after is not None and 590 < refused.value.retry_after <= 600
    assert fake_openai.counters(PRIMARY).requests == 0


def test_a_request_whose_deadline_passes_in_maintenance_is_deferred_when_a_queue_file_is_set(
        fake_openai: FakeOpenAI, tmp_path: Any) -> None:
    queue = tmp_path / "later.jsonl"
    gate = fg.Gateway(base_url=fake_openai.base_url, fallback={"defer_to": str(queue)})
    client = gate.openai(api_key="sk-fake")
    gate.modes.set("maintenance", reason="migration")
    with gate.scope(deadline=0.2), pytest.raises(openai.InternalServerError) as deferred:
        client.chat.completions.create(model=PRIMARY, messages=MSG)
    line = json.loads(queue.read_text())
    assert deferred.value.response.headers["x-fleetgate-deferred-id"] == line["custom_id"]
    assert line["body"]["messages"] == MSG and fake_openai.counters(PRIMARY).requests == 0
    gate.close()


def test_an_operators_mode_expires_by_itself(fake_openai: FakeOpenAI) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, fallback={"static_answer": "Back soon."})
    client = gate.openai(api_key="sk-fake")
    gate.modes.set("static", for_seconds=2)
    assert mode_of(send(client, 1)[0]) == "static"
    until(lambda: mode_of(send(client, 1)[0]) == "full")
    assert gate.modes.current.source == "default"


def test_an_unknown_mode_or_duration_is_refused_with_the_choices() -> None:
    gate = fg.Gateway()
    with pytest.raises(fg.ConfigError, match="full, reduced, cached-only, static, maintenance"):
        gate.modes.set("degraded")
    with pytest.raises(fg.ConfigError, match="positive"):
        gate.modes.set("static", for_seconds=0)


def test_fleetgate_mode_set_reaches_another_process_and_show_lists_the_pods(
        store_url: str, fake_openai: FakeOpenAI) -> None:
    ModeStore(store_url).clear()
    pod = subprocess.Popen([sys.executable, "-c", f"""
import sys, time, fleetgate as fg
gate = fg.Gateway(redis_url={store_url!r}, base_url={fake_openai.base_url!r})
print("ready", flush=True)
end = time.monotonic() + 30
while gate.modes.current.mode != "cached-only" and time.monotonic() < end:
    time.sleep(0.01)
print(gate.modes.current.mode, gate.modes.current.source, flush=True)
client = gate.openai(api_key="sk-fake")
try:
    client.chat.completions.create(model="gpt-4.1", messages=[{{"role": "user", "content": "hi"}}])
except fg.ServiceDegraded as e:
    print("refused", e.mode, flush=True)
time.sleep(1)  # stays up for `mode show`
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert pod.stdout is not None and pod.stdout.readline().strip() == "ready"
        runner = CliRunner()
        done = runner.invoke(cli, ["mode", "set", "cached-only", "--for", "30m", "--reason", "upstream incident",
                                   "--redis", store_url])
        assert done.exit_code == 0, done.output
        assert "cached-only" in done.output and "30m" in done.output
        assert pod.stdout.readline().split() == ["cached-only", "operator"]
        assert pod.stdout.readline().split() == ["refused", "cached-only"]
        shown = runner.invoke(cli, ["mode", "show", "--redis", store_url])
        assert shown.exit_code == 0, shown.output
        assert "cached-only (operator" in shown.output and "upstream incident" in shown.output
        assert f":{pod.pid}:" in shown.output  # the other process says which mode it serves in
        cleared = runner.invoke(cli, ["mode", "clear", "--redis", store_url])
        assert cleared.exit_code == 0 and ModeStore(store_url).read() is None
    finally:
        pod.kill()
        pod.wait()


def test_a_quiet_pod_follows_the_mode_a_quorum_of_the_fleet_judges(fake_openai: FakeOpenAI, redis_url: str) -> None:
    redis_url = redis_url.rsplit("/", 1)[0] + "/7"  # a database no other test's pods say their mode in
    ModeStore(redis_url).redis.delete("fg:mode", "fg:mode:pods")
    modes = {**FAST, "enter": {"cached-only": ModeTrigger(error_rate=0.3)}, "exit_after_seconds": 5.0}
    busy = fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url, breakers={"enabled": False}, modes=modes)
    quiet = fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url, breakers={"enabled": False}, modes=modes)
    fake_openai.set_faults([Fault(kind="error", status=503)])
    client = busy.openai(api_key="sk-fake", max_retries=0)
    until(lambda: (send(client, 1), busy.modes.current.mode == "cached-only")[1])
    until(lambda: quiet.modes.current.mode == "cached-only")  # it sent nothing: it follows 1 of 2 pods
    assert quiet.modes.current.source == "auto" and "1 of 2 pods" in quiet.modes.current.reason
    alone = fg.Gateway(base_url=fake_openai.base_url, redis_url=redis_url, breakers={"enabled": False},
                       modes={**modes, "quorum": 1.0})
    for _ in range(10):
        alone.modes.judge()
    assert alone.modes.current.mode == "full"  # one of three pods is no quorum of all
    for gate in (busy, quiet, alone):
        gate.close()


def test_maintenance_cannot_be_entered_on_rates_that_it_stops_measuring() -> None:
    with pytest.raises(ValueError, match="nothing would show recovery"):
        ModeSettings(enter={"maintenance": ModeTrigger(error_rate=0.9)})


def test_fleetgate_mode_set_without_redis_says_how_to_reach_the_fleet() -> None:
    done = CliRunner().invoke(cli, ["mode", "set", "static"], env={"FLEETGATE_REDIS_URL": ""})
    assert done.exit_code != 0 and "--redis" in done.output


# -- how an answer says its mode ----------------------------------------------------------------

def test_each_answer_names_its_mode_in_header_metrics_and_log(fake_openai: FakeOpenAI,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import REGISTRY

    gate = fg.Gateway(base_url=fake_openai.base_url, fallback={"static_answer": "Back soon."})
    client = gate.openai(api_key="sk-fake")

    def answers(mode: str) -> float:
        return REGISTRY.get_sample_value("fleetgate_mode_answers_total", {"mode": mode}) or 0.0

    before = answers("static")
    with caplog.at_level(logging.INFO, logger="fleetgate.requests"):
        gate.modes.set("static")
        assert mode_of(send(client, 1)[0]) == "static"
    assert answers("static") == before + 1
    assert REGISTRY.get_sample_value("fleetgate_mode", {"mode": "static"}) == 1.0
    assert REGISTRY.get_sample_value("fleetgate_mode", {"mode": "full"}) == 0.0
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fleetgate.requests"]
    assert records[-1]["mode"] == "static" and records[-1]["tier"] == "static"
    gate.modes.clear()
    assert mode_of(send(client, 1)[0]) == "full"


@pytest.mark.fake_openai()
def test_a_redis_outage_is_said_once_as_it_starts_and_once_as_it_ends_not_every_tick(
        fake_openai: FakeOpenAI, redis_rig: RedisRig, caplog: pytest.LogCaptureFixture) -> None:
    url = redis_rig.start_standalone()
    node = redis_rig.nodes[-1]
    assert node.process is not None
    # A global budget: the modes judge its spent share too, read from the same Redis.
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url=url, modes=FAST, budgets={"limits": [{"dollars": 5.0}]})
    ticks = 0
    signals = fleet_signals(gate.breakers, gate.budgets, gate.config.modes)

    def counted() -> dict[str, Any]:
        nonlocal ticks
        ticks += 1
        return signals()

    gate.modes.start(counted)
    until(lambda: ticks >= 3)
    caplog.set_level(logging.INFO, logger="fleetgate")
    caplog.clear()

    node.process.kill()
    node.process.wait(timeout=10)
    began = ticks
    until(lambda: ticks >= began + 40)  # about 2 s of judging every 0.05 s
    during = [r for r in caplog.records if r.name == "fleetgate"]
    assert all(r.exc_info is None for r in during), "no traceback"
    said = sorted(r.getMessage().split(" is unavailable")[0] for r in during)
    # Once per user of the store: the modes' own exchange, and the budgets' share it reads.
    assert said == [f"fleetgate: the budgets' Redis at {url}", f"fleetgate: the modes' Redis at {url}"], said
    assert all(r.levelno == logging.WARNING for r in during)

    caplog.clear()
    redis_rig.restart(node)
    until(lambda: len([r for r in caplog.records if "answers again" in r.getMessage()]) == 2)
    ended = ticks
    until(lambda: ticks >= ended + 10)
    after = [r for r in caplog.records if r.name == "fleetgate"]
    assert [r.levelno for r in after] == [logging.INFO, logging.INFO], [r.getMessage() for r in after]
    gate.modes.close()
    node.process.terminate()
    node.process.wait(timeout=10)


def test_a_failing_judgement_is_logged_once_while_it_lasts(caplog: pytest.LogCaptureFixture) -> None:
    modes = Modes(ModeSettings(**FAST), None)
    ticks, failing = 0, True

    def signals() -> dict[str, Any]:
        nonlocal ticks
        ticks += 1
        if failing:
            raise RuntimeError("a signal cannot be read")
        return {}

    caplog.set_level(logging.INFO, logger="fleetgate")
    modes.start(signals)
    until(lambda: ticks >= 20)
    failing = False
    until(lambda: ticks >= 30)
    modes.close()
    said = [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records if r.name == "fleetgate"]
    assert [level for level, _, _ in said] == [logging.ERROR, logging.INFO], said
    assert "a signal cannot be read" in said[0][1] and said[0][2] is None


def test_every_mode_change_is_logged_with_a_reason(caplog: pytest.LogCaptureFixture) -> None:
    """The default mode has no reason of its own: the log says what ended the one before."""
    caplog.set_level(logging.INFO, logger="fleetgate")
    with fg.Gateway(modes={"evaluate_every_seconds": 0.05}) as gate:
        gate.modes.set("static")
        gate.modes.clear()
        gate.modes.set("cached-only", for_seconds=0.2)
        until(lambda: gate.modes.current.mode == "full")
    said = [r.getMessage() for r in caplog.records if "fleetgate: mode " in r.getMessage()]
    assert said == ["fleetgate: mode full → static (operator: set in this process)",
                    "fleetgate: mode static → full (default: the operator's mode was cleared)",
                    said[2], "fleetgate: mode cached-only → full (default: the operator's mode expired)"], said
    assert said[2].startswith("fleetgate: mode full → cached-only until ") and said[2].endswith(
        "(operator: set in this process)")
    assert fg.modes.change_reason(fg.ModeState("static", "operator"), fg.ModeState("full")) == \
        "the operator's mode was cleared"
    assert fg.modes.change_reason(fg.ModeState("full"), fg.ModeState("static", "operator")) == "set by an operator"
    assert fg.modes.change_reason(fg.ModeState("reduced", "auto", "error rate 0.6"), fg.ModeState("full")) == \
        "the signals recovered"

"""Priority lanes: fleetgate.Lanes directly (threads and asyncio), then the gateway under
2x overload against FakeOpenAI."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import openai
import pytest

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency

REALTIME, INTERACTIVE, BATCH = (int(p) for p in fg.Priority)
MODEL = "gpt-4.1-mini"
MSG = [{"role": "user", "content": "Where is my order?"}]


def test_a_full_house_queues_and_realtime_goes_first() -> None:
    lanes = fg.Lanes(1, queue_limit=10)
    held = lanes.enter(BATCH)
    order: list[str] = []

    def wait(priority: int, name: str) -> None:
        slot = lanes.enter(priority, timeout=10)
        order.append(name)
        slot.release()

    threads = [threading.Thread(target=wait, args=(BATCH, "batch"))]
    threads[0].start()
    while lanes.queued(BATCH) < 1:
        time.sleep(0.001)
    threads.append(threading.Thread(target=wait, args=(REALTIME, "realtime")))
    threads[1].start()
    while lanes.queued(REALTIME) < 1:
        time.sleep(0.001)
    held.release()
    for t in threads:
        t.join()
    assert order == ["realtime", "batch"]
    assert lanes.in_use == 0


def test_full_lanes_refuse_and_deadlines_expire_without_a_slot() -> None:
    lanes = fg.Lanes(1, queue_limit=0)
    slot = lanes.enter(INTERACTIVE)
    with pytest.raises(fg.QueueFull) as full:
        lanes.enter(INTERACTIVE)
    assert full.value.lane == "interactive" and full.value.limit == 0 and "queue_limit" in str(full.value)
    waiting = fg.Lanes(1, queue_limit=5)
    hold = waiting.enter(BATCH)
    with pytest.raises(fg.DeadlineExpired) as expired:
        waiting.enter(BATCH, timeout=0.05)
    assert isinstance(expired.value, TimeoutError) and expired.value.lane == "batch"
    assert waiting.stats()["batch"]["expired"] == 1
    hold.release()
    slot.release()
    assert lanes.in_use == 0 and waiting.in_use == 0
    with pytest.raises(fg.ConfigError):
        fg.Lanes(0)
    with pytest.raises(fg.ConfigError, match="priority"):
        waiting.enter(7)


def test_async_waiters_and_cancellation_never_leak_a_slot() -> None:
    lanes = fg.Lanes(2, queue_limit=100)

    async def main() -> None:
        held = [await lanes.enter_async(INTERACTIVE), await lanes.enter_async(INTERACTIVE)]
        waiters = [asyncio.ensure_future(lanes.enter_async(BATCH, timeout=30)) for _ in range(20)]
        await asyncio.sleep(0.05)
        assert lanes.queued(BATCH) == 20
        for w in waiters[:15]:
            w.cancel()
        for slot in held:
            slot.release()
        done = []
        for w in waiters[15:]:
            slot = await w
            done.append(slot.lane)
            slot.release()
        assert done == ["batch"] * 5

    asyncio.run(main())
    deadline = time.monotonic() + 5
    while lanes.in_use and time.monotonic() < deadline:
        time.sleep(0.01)  # cancelled waiters hand on slots granted to them meanwhile
    assert lanes.in_use == 0


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="latency", latency=Latency(ms=50))]))
def test_under_2x_overload_realtime_keeps_moving_and_batch_gets_its_share(fake_openai: FakeOpenAI) -> None:
    """Capacity: 4 calls in flight of 50 ms (about 80/s). Offered: 320 calls at once, a tenth
    realtime, the rest interactive and batch, batch with a deadline shorter than the backlog
    (about 4 s) but long enough for its share to come even when the machine is busy: the 320
    calls are built one after another (about a second on a loaded machine) before any queue
    moves, and the 32 realtime calls go first."""
    gate = fg.Gateway(base_url=fake_openai.base_url, lanes={"concurrency": 4, "queue_limit": 1000})
    client = gate.async_openai(api_key="sk-fake", max_retries=0)
    finished: list[tuple[str, float]] = []

    async def one(priority: fg.Priority, deadline: float) -> str:
        async with gate.scope(priority=priority, deadline=deadline):
            try:
                await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8)
            except openai.APIStatusError as e:
                return str(e.code)
        finished.append((priority.name, time.monotonic()))
        return "ok"

    async def main() -> list[tuple[fg.Priority, str]]:
        kinds = [fg.Priority.REALTIME if i % 10 == 0 else fg.Priority.INTERACTIVE if i % 2 else fg.Priority.BATCH
                 for i in range(320)]
        results = await asyncio.gather(*(one(k, 3.0 if k is fg.Priority.BATCH else 60) for k in kinds))
        return list(zip(kinds, results))

    outcomes = asyncio.run(main())
    by: dict[str, list[str]] = {}
    for kind, result in outcomes:
        by.setdefault(kind.name, []).append(result)
    assert set(by["REALTIME"]) == {"ok"}
    assert by["BATCH"].count("ok") > 0, "the lowest lane still gets its share"
    expired = by["BATCH"].count("fleetgate_deadline_expired")
    assert expired > 0, "more batch work than fits before its deadline"
    ok = sum(r == "ok" for _, r in outcomes)
    assert fake_openai.counters(MODEL).requests == ok, "no expired request was dispatched"
    # Realtime calls were queued behind at most the calls already holding slots: every one
    # finished before the last interactive call did.
    last_interactive = max(t for name, t in finished if name == "INTERACTIVE")
    assert max(t for name, t in finished if name == "REALTIME") < last_interactive
    assert gate.lanes_for(MODEL).in_use == 0  # type: ignore[union-attr]


def test_lane_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        fg.Gateway(lanes={"concurrency": 0})
    gate: Any = fg.Gateway(lanes={"concurrency": 8, "models": {"gpt-4.1": 2}})
    assert gate.lanes_for("gpt-4.1").concurrency == 2 and gate.lanes_for(MODEL).concurrency == 8
    assert fg.Gateway().lanes_for(MODEL) is None

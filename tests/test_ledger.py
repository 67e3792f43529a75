"""Dollar budgets: the ledger in process and shared through real Redis (standalone and
cluster), by threads, by pods (separate ledgers), and by a pod that dies holding a
reservation (a separate process, killed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from fleetgate._core import Budget, BudgetReservation, Ledger, Limiter
from fleetgate.errors import BudgetExceeded, ConfigError, FleetgateError, StoreUnavailable
from fleetgate.testing import RedisRig
from tests.polling import until

MakeLedger = Callable[..., Ledger]


def unix(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone.utc).timestamp()


NOW = unix(2030, 1, 1, 12)


@pytest.fixture(params=["embedded", "standalone", "cluster"])
def make_ledger(request: pytest.FixtureRequest) -> MakeLedger:
    """Ledgers on one store: in process, or on a shared Redis (one limiter per ledger, as
    separate pods would have)."""
    if request.param == "embedded":
        return Ledger
    url = request.getfixturevalue("redis_url" if request.param == "standalone" else "cluster_url")
    return lambda **options: Ledger(Limiter(url), **options)


@pytest.fixture
def fresh() -> Callable[[str], str]:
    """Budget names no other test uses (Redis is shared by the whole session)."""
    run = uuid.uuid4().hex[:10]
    return lambda label: f"{label}-{run}"


def test_the_store_is_the_one_asked_for(make_ledger: MakeLedger, request: pytest.FixtureRequest) -> None:
    assert make_ledger().embedded == (request.node.callspec.params["make_ledger"] == "embedded")


def test_reservations_from_16_threads_never_exceed_the_limit(make_ledger: MakeLedger,
                                                              fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    budget = Budget(fresh("threads"), 1.0)
    spent: list[float] = []
    kept: list[float] = []
    refused = 0
    lock = threading.Lock()

    def work(seed: int) -> None:
        nonlocal refused
        rng = random.Random(seed)
        for _ in range(30):
            dollars = rng.randrange(10, 100) / 1000
            try:
                r = ledger.reserve([budget], dollars, now=NOW)
            except BudgetExceeded as e:
                assert e.spent + dollars > e.limit
                with lock:
                    refused += 1
                continue
            choice = rng.randrange(3)
            if choice == 0:
                actual = dollars * rng.randrange(0, 100) / 100
                ledger.settle(r, actual)
                with lock:
                    spent.append(actual)
            elif choice == 1:
                ledger.release(r)
            else:
                with lock:
                    kept.append(dollars)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    status = ledger.status(budget, now=NOW)
    assert refused > 0, "the threads asked for more than the limit, so some must have been refused"
    assert status.spent == pytest.approx(sum(spent), abs=1e-6)
    assert status.reserved == pytest.approx(sum(kept), abs=1e-6)
    assert status.spent + status.reserved <= 1.0 + 1e-9


def test_a_reservation_is_all_or_nothing_across_budgets(make_ledger: MakeLedger,
                                                        fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    roomy, tight = Budget(fresh("roomy"), 10.0), Budget(fresh("tight"), 1.0)
    ledger.reserve([tight], 0.8, now=NOW)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([roomy, tight], 0.5, now=NOW)
    assert refused.value.budget == tight.name
    assert ledger.status(roomy, now=NOW).reserved == 0.0, "what roomy held was given back"
    both = ledger.reserve([roomy, tight], 0.2, now=NOW)
    assert both.budgets == (roomy.name, tight.name)
    assert both.period == ("2030-01-01", "2030-01-01")
    assert both.dollars == pytest.approx(0.2)
    assert ledger.status(roomy, now=NOW).reserved == pytest.approx(0.2)
    assert ledger.status(tight, now=NOW).reserved == pytest.approx(1.0)


def test_a_hold_of_nothing_settles_and_gives_back(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    """A hold of $0 (a spend known already, recorded through a reservation) settles with its
    spend, and gives back nothing when released; lapsed holds of $0 give back nothing too."""
    ledger, budget = make_ledger(), Budget(fresh("zero"), 1.0)
    ledger.settle(ledger.reserve([budget], 0.0, now=NOW), 0.25, model="gpt-4.1")
    ledger.release(ledger.reserve([budget], 0.0, now=NOW))
    ledger.reserve([budget], 0.0, lease=0.05, now=NOW)
    time.sleep(0.1)  # the lease lapsed: the next reservation sweeps it
    ledger.reserve([budget], 0.1, now=NOW)
    status = ledger.status(budget, now=NOW)
    assert (status.spent, status.reserved) == (pytest.approx(0.25), pytest.approx(0.1))


_DYING_POD = """
import sys
from fleetgate._core import Budget, Ledger, Limiter
ledger = Ledger(Limiter(sys.argv[1]))
budget = Budget(sys.argv[2], 1.0)
ledger.reserve([budget], 1.0, lease=0.3)
print(ledger.status(budget).reserved, flush=True)
sys.stdin.read()  # held until killed
"""


def test_a_killed_pods_reservation_lapses_after_its_lease(store_url: str, fresh: Callable[[str], str]) -> None:
    budget = Budget(fresh("dying"), 1.0)
    pod = subprocess.Popen([sys.executable, "-c", _DYING_POD, store_url, budget.name], stdin=subprocess.PIPE,
                           stdout=subprocess.PIPE, text=True)
    try:
        assert pod.stdout is not None
        assert float(pod.stdout.readline()) == 1.0, "the dying pod held the whole budget"
    finally:
        os.kill(pod.pid, signal.SIGKILL)
        pod.wait()
    ledger = Ledger(Limiter(store_url))
    deadline = time.monotonic() + 20
    while True:
        try:
            held = ledger.reserve([budget], 1.0)
            break
        except BudgetExceeded:
            assert time.monotonic() < deadline, "the dead pod's reservation never lapsed"
            time.sleep(0.05)
    assert held.dollars == 1.0
    assert ledger.status(budget).reserved == 1.0


def test_each_alert_fires_once_across_two_pods(store_url: str, fresh: Callable[[str], str]) -> None:
    budget = Budget(fresh("alerts"), 1.0, alerts=(0.5, 0.9, 1.0))
    heard: list[tuple[str, tuple[str, float, float, float, str]]] = []
    returned: list[tuple[str, float, float, float, str]] = []
    lock = threading.Lock()

    def pod(label: str) -> Ledger:
        def on_alert(*alert: Any) -> None:
            with lock:
                heard.append((label, alert))
        return Ledger(Limiter(store_url), on_alert=on_alert)

    pods = [pod("a"), pod("b")]

    def spend(ledger: Ledger) -> None:
        for _ in range(25):
            found = ledger.settle(ledger.reserve([budget], 0.01, now=NOW), 0.01, feature="alerts")
            with lock:
                returned.extend(found)

    threads = [threading.Thread(target=spend, args=(p,)) for p in pods for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a[1] for a in returned) == [0.5, 0.9, 1.0]
    assert sorted(alert for _, alert in heard) == sorted(returned), "on_alert hears what settle returns"
    assert {a[0] for a in returned} == {budget.name} and {a[4] for a in returned} == {"2030-01-01"}
    for _, threshold, spent, limit, _ in returned:
        assert spent >= threshold * limit
    assert pods[0].status(budget, now=NOW).spent == pytest.approx(1.0)
    with pytest.raises(BudgetExceeded):
        pods[1].reserve([budget], 0.01, now=NOW)
    assert len(heard) == 3, "a refusal fires no alert"


def _alerting_pod(url: str, name: str, out: Any) -> None:
    """A pod in its own process: spends on `name` until refused and reports the alerts it
    heard of (from its settlements)."""
    budget = Budget(name, 1.0, alerts=(0.5, 0.75, 0.9, 1.0))
    heard: list[float] = []
    ledger = Ledger(Limiter(url), on_alert=lambda _budget, threshold, *_: heard.append(threshold))
    for _ in range(40):
        try:
            held = ledger.reserve([budget], 0.01, now=NOW)
        except BudgetExceeded:
            break
        ledger.settle(held, 0.01)
    out.put(heard)


def test_each_alert_fires_once_across_processes(store_url: str, fresh: Callable[[str], str]) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    name = fresh("alerts-procs")
    procs = [ctx.Process(target=_alerting_pod, args=(store_url, name, out)) for _ in range(4)]
    for p in procs:
        p.start()
    fired = [threshold for _ in procs for threshold in out.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(fired) == [0.5, 0.75, 0.9, 1.0], "4 processes spent $1.00 together; each alert fired once"


def test_a_refused_reservation_fires_no_alert(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    """Worst cases in flight fill a budget long before its spend does: a refusal says
    nothing of what was spent, so it fires no alert, and leaves the 100% alert to the
    spending that reaches it."""
    heard: list[tuple[Any, ...]] = []
    ledger = make_ledger(on_alert=lambda *a: heard.append(a))
    budget = Budget(fresh("refusals"), 2.0)
    for _ in range(3):
        with pytest.raises(BudgetExceeded):
            ledger.reserve([budget], 2.5, now=NOW)
    in_flight = ledger.reserve([budget], 1.5, now=NOW)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([budget], 0.6, now=NOW)
    assert heard == [], "no alert on a refusal"
    ledger.settle(in_flight, 0.5)
    assert heard == [], "$0.50 of $2.00 is under every threshold"
    ledger.settle(ledger.reserve([budget], 1.5, now=NOW), 1.5)
    assert [(a[1], a[2]) for a in heard] == [(0.5, 2.0), (0.75, 2.0), (0.9, 2.0), (1.0, 2.0)]
    for _, threshold, spent, limit, _ in heard:
        assert spent >= threshold * limit, "an alert fires on what was spent"


def test_an_alert_hook_that_fails_is_reported_not_lost(make_ledger: MakeLedger, fresh: Callable[[str], str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    def broken(*alert: Any) -> None:
        raise RuntimeError("the pager is down")

    ledger = make_ledger(on_alert=broken)
    budget = Budget(fresh("hook"), 1.0, alerts=(0.5,))
    alerts = ledger.settle(ledger.reserve([budget], 0.6, now=NOW), 0.6)
    assert [a[1] for a in alerts] == [0.5], "the settlement went through"
    assert len(reported) == 1 and isinstance(reported[0].exc_value, RuntimeError)


def test_periods_roll_over(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    daily = Budget(fresh("daily"), 1.0)
    ledger.settle(ledger.reserve([daily], 1.0, now=NOW), 1.0)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([daily], 0.01, now=NOW)
    assert refused.value.resets_at == unix(2030, 1, 2)
    tomorrow = ledger.reserve([daily], 0.5, now=unix(2030, 1, 2, 0, 0, 1))
    assert tomorrow.period == ("2030-01-02",)
    status = ledger.status(daily, now=unix(2030, 1, 2, 8))
    assert (status.period, status.spent, status.reserved) == ("2030-01-02", 0.0, 0.5)
    assert ledger.status(daily, now=NOW).spent == 1.0, "yesterday keeps its spending"

    monthly = Budget(fresh("monthly"), 5.0, period="month", timezone="America/New_York")
    # 03:00 UTC on January 1st is still December 31st in New York.
    december = ledger.reserve([monthly], 5.0, now=unix(2030, 1, 1, 3))
    assert december.period == ("2029-12",)
    january = ledger.reserve([monthly], 5.0, now=unix(2030, 1, 1, 6))
    assert january.period == ("2030-01",)
    assert monthly.window(unix(2030, 1, 1, 6)) == ("2030-01", unix(2030, 1, 1, 5), unix(2030, 2, 1, 5))


def test_windows_follow_the_time_zone() -> None:
    berlin = Budget("berlin", 1.0, timezone="Europe/Berlin")
    period, starts, resets = berlin.window(unix(2030, 3, 31, 12))
    assert period == "2030-03-31" and resets - starts == 23 * 3600, "the day clocks go forward"
    kolkata = Budget("kolkata", 1.0, timezone="Asia/Kolkata")
    assert kolkata.window(unix(2030, 6, 1, 19)) == ("2030-06-02", unix(2030, 6, 1, 18, 30), unix(2030, 6, 2, 18, 30))
    now = time.time()
    period, starts, resets = Budget("now", 1.0).window()
    assert starts <= now < resets + 1


def test_settled_costs_are_reported_by_day_and_labels(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    ledger = make_ledger(report_timezone="Asia/Kolkata")
    budget = Budget(fresh("report"), 100.0)
    model = fresh("model")
    # 20:00 UTC on January 1st is 01:30 on January 2nd in Kolkata.
    evening = unix(2030, 1, 1, 20)
    for user, cost in [("u1", 0.5), ("u1", 0.25), ("u2", 0.125)]:
        r = ledger.reserve([budget], 1.0, now=evening)
        ledger.settle(r, cost, model=model, feature="chat", user=user, team="support")
    ledger.release(ledger.reserve([budget], 1.0, now=evening))
    rows = [row for row in ledger.report(["2030-01-02", "2030-01-01"]) if row[1] == model]
    assert rows == [
        ("2030-01-02", model, "chat", "u1", "support", 0.75),
        ("2030-01-02", model, "chat", "u2", "support", 0.125),
    ]
    assert ledger.status(budget, now=evening).spent == 0.875


def test_a_call_under_no_budget_still_records_its_spend(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    model = fresh("unbudgeted")
    r = ledger.reserve([], 3.0, now=NOW)
    assert (r.budgets, r.period, r.dollars) == ((), (), 3.0)
    assert ledger.settle(r, 0.25, model=model) == []
    rows = [row for row in ledger.report(["2030-01-01"]) if row[1] == model]
    assert rows == [("2030-01-01", model, "", "", "", 0.25)]


def test_budget_exceeded_says_what_and_what_to_do(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    budget = Budget(fresh("exceeded"), 2.0)
    ledger.settle(ledger.reserve([budget], 1.0, now=NOW), 1.0)
    ledger.reserve([budget], 0.5, now=NOW)
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([budget], 0.75, now=NOW)
    e = refused.value
    assert isinstance(e, FleetgateError)
    assert (e.budget, e.limit, e.spent, e.resets_at) == (budget.name, 2.0, 1.5, unix(2030, 1, 2))
    assert e.retry_after > 0
    message = str(e)
    for part in (budget.name, "may cost $0.75", "holds $1.50 of its $2.00 for 2030-01-01", "2030-01-02T00:00:00Z",
                 "raise its limit", "max output tokens"):
        assert part in message, message
    with pytest.raises(BudgetExceeded) as too_big:
        ledger.reserve([Budget(fresh("small"), 1.0)], 1.5, now=NOW)
    assert too_big.value.spent == 0.0


def test_a_reservation_ends_once(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    budget = Budget(fresh("once"), 1.0)
    r = ledger.reserve([budget], 0.5, now=NOW)
    ledger.settle(r, 0.25)
    for again in (lambda: ledger.settle(r, 0.25), lambda: ledger.release(r), lambda: ledger.settle_later(r, 0.1),
                  lambda: ledger.release_later(r)):
        with pytest.raises(ConfigError, match="already settled or released"):
            again()
    other = make_ledger()
    with pytest.raises(ConfigError, match="another ledger"):
        other.release(ledger.reserve([budget], 0.1, now=NOW))
    assert ledger.status(budget, now=NOW).spent == 0.25


def test_settling_later_counts_and_alerts_in_the_background(make_ledger: MakeLedger,
                                                            fresh: Callable[[str], str]) -> None:
    heard = threading.Event()
    ledger = make_ledger(on_alert=lambda *a: heard.set())
    budget = Budget(fresh("later"), 1.0, alerts=(0.5,))
    ledger.settle_later(ledger.reserve([budget], 0.75, now=NOW), 0.6, model="m")
    ledger.release_later(ledger.reserve([budget], 0.25, now=NOW))
    assert heard.wait(10), "the background settlement alerted"
    deadline = time.monotonic() + 10
    while (status := ledger.status(budget, now=NOW)).reserved > 0:
        assert time.monotonic() < deadline, "the background release never happened"
        time.sleep(0.01)
    assert status.spent == 0.6


def test_reserving_from_asyncio(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    budget = Budget(fresh("async"), 1.0)

    async def main() -> tuple[list[BudgetReservation], int]:
        results = await asyncio.gather(*(ledger.reserve_async([budget], 0.1, now=NOW) for _ in range(15)),
                                       return_exceptions=True)
        held = [r for r in results if isinstance(r, BudgetReservation)]
        assert all(isinstance(r, (BudgetReservation, BudgetExceeded)) for r in results), results
        return held, len(results) - len(held)

    held, refused = asyncio.run(main())
    assert (len(held), refused) == (10, 5)
    assert ledger.status(budget, now=NOW).reserved == pytest.approx(1.0)


def test_a_cancelled_async_reservation_is_given_back(make_ledger: MakeLedger, fresh: Callable[[str], str]) -> None:
    ledger = make_ledger()
    budget = Budget(fresh("cancelled"), 1.0)

    async def main() -> None:
        task = asyncio.ensure_future(ledger.reserve_async([budget], 1.0, now=NOW))
        await asyncio.sleep(0)  # started, not finished
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The loop stays up: an outcome that arrives now is given back when it is drained.
        # The abandoned reservation may not even be made yet: wait until the whole budget
        # can be reserved again (its lease is 600 s, so only a give-back frees it in time).
        deadline = time.monotonic() + 10
        while True:
            try:
                ledger.release(ledger.reserve([budget], 1.0, now=NOW))
                return
            except BudgetExceeded:
                assert time.monotonic() < deadline, "the abandoned reservation was never given back"
                await asyncio.sleep(0.01)

    asyncio.run(main())


def test_bad_inputs_say_what_is_wrong(make_ledger: MakeLedger) -> None:
    def refused(make: Callable[[], object], *words: str) -> None:
        with pytest.raises(ConfigError) as e:
            make()
        for word in words:
            assert word in str(e.value), str(e.value)

    refused(lambda: Budget("b", 1.0, timezone="Mars/Olympus"), "Mars/Olympus", "Europe/Berlin")
    refused(lambda: Budget("b", 0.0), "positive number of dollars")
    refused(lambda: Budget("b", float("nan")), "positive number of dollars")
    refused(lambda: Budget("b", 1.0, alerts=(0.5, 1.5)), "(0, 1]")
    refused(lambda: Budget("b", 1.0, period="week"), '"day" or "month"')  # type: ignore[arg-type]
    refused(lambda: Budget("", 1.0), "non-empty name")
    refused(lambda: make_ledger(report_timezone="Nowhere"), "Nowhere")
    ledger = make_ledger()
    budget = Budget(f"bad-{uuid.uuid4().hex}", 1.0)
    refused(lambda: ledger.reserve([budget], -1.0), "0 or more")
    refused(lambda: ledger.reserve([budget], 0.1, lease=0), "lease")
    refused(lambda: ledger.reserve([budget], 0.1, timeout=0), "timeout", "(0, 60]")
    refused(lambda: ledger.reserve([budget], 0.1, now=float("inf")), "Unix time")
    refused(lambda: ledger.report(["yesterday"]), "YYYY-MM-DD")
    r = ledger.reserve([budget], 0.1)
    refused(lambda: ledger.settle(r, float("nan")), "dollars")
    refused(lambda: ledger.settle(r, 0.1, user="a\x1fb"), "user label")
    ledger.settle(r, 0.1)
    with pytest.raises(TypeError, match="sequence of Budget"):
        ledger.reserve(budget, 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sequence of Budget"):
        ledger.reserve(["global"], 0.1)  # type: ignore[list-item]


def test_budgets_describe_themselves() -> None:
    b = Budget("team:search", 25.5, "month", "Europe/Berlin", [1.0, 0.8])
    assert (b.name, b.limit, b.period, b.timezone, b.alerts) == ("team:search", 25.5, "month", "Europe/Berlin",
                                                                 (0.8, 1.0))
    assert Budget("d", 1.0).alerts == (0.5, 0.75, 0.9, 1.0)
    assert "team:search" in repr(b)


def test_a_ledger_that_does_not_answer_in_time_is_unavailable_and_keeps_no_hold(
        redis_rig: RedisRig, fresh: Callable[[str], str]) -> None:
    url = redis_rig.start_standalone()
    node = redis_rig.nodes[-1]
    assert node.process is not None
    ledger = Ledger(Limiter(url, timeout=30.0))  # alone, the store would wait minutes for a paused Redis
    budget = Budget(fresh("paused"), 1.0)
    ledger.release(ledger.reserve([budget], 0.1, now=NOW))  # connected
    node.process.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable, match=r"no answer within 0\.200s"):
            ledger.reserve([budget], 0.6, now=NOW, timeout=0.2)

        async def late() -> None:
            await ledger.reserve_async([budget], 0.3, now=NOW, timeout=0.2)

        with pytest.raises(StoreUnavailable, match="no answer"):
            asyncio.run(late())
    finally:
        node.process.send_signal(signal.SIGCONT)
    # Redis made both holds once it woke; nobody was left to use them, so they were given back.
    until(lambda: ledger.status(budget, now=NOW).reserved == 0)
    ledger.settle(ledger.reserve([budget], 1.0, now=NOW, timeout=5.0), 0.5)
    node.process.terminate()
    node.process.wait(timeout=10)

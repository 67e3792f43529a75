"""What a pod judges its mode on: its own recent upstream calls (error rate, latency), and what
the fleet shares (breakers open, a global budget's spent share)."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetgate._core import Breakers
    from fleetgate.budget.guard import Budgets
    from fleetgate.config import ModeSettings

__all__ = ["Signals", "fleet_signals"]


@dataclass(frozen=True, slots=True)
class Signals:
    """What a pod judges its mode on. Rates are None with too few calls to say."""

    requests: int = 0
    error_rate: float | None = None
    p95_seconds: float | None = None
    open_breakers: int = 0
    isolated_breakers: int = 0
    budget_share: float = 0.0


class _Window:
    """This pod's recent upstream calls: (when, failed, seconds). Appending is the only
    work on the request path (a deque append is atomic); the judging thread prunes."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: deque[tuple[float, bool, float]] = deque(maxlen=20_000)

    def add(self, failed: bool, seconds: float) -> None:
        self.calls.append((time.monotonic(), failed, seconds))

    def signals(self, min_requests: int, **fleet: Any) -> Signals:
        horizon = time.monotonic() - self.seconds
        calls = self.calls
        while calls and calls[0][0] < horizon:
            calls.popleft()
        recent = list(calls)
        n = len(recent)
        if n < min_requests:
            return Signals(requests=n, **fleet)
        times = sorted(c[2] for c in recent)
        p95 = times[min(n - 1, math.ceil(0.95 * n) - 1)]
        return Signals(requests=n, error_rate=sum(1 for c in recent if c[1]) / n, p95_seconds=p95, **fleet)


def fleet_signals(breakers: Breakers | None, budgets: Budgets,
                  settings: ModeSettings) -> Callable[[], dict[str, Any]]:
    """What the fleet shares that a pod's mode is judged on: breakers open and isolated
    (shared through Redis), and the most spent share of a global budget (read only when a
    trigger asks for it)."""
    wants_budget = any(t.budget_share is not None for t in settings.enter.values())

    def signals() -> dict[str, Any]:
        states = breakers.states().values() if breakers is not None else ()
        found: dict[str, Any] = {"open_breakers": sum(1 for s in states if s in ("open", "isolated")),
                                 "isolated_breakers": sum(1 for s in states if s == "isolated")}
        if wants_budget:
            found["budget_share"] = budgets.spent_share()
        return found

    return signals

"""What the fake OpenAI server billed: one charge per answer that spent tokens (an answer
read whole, a stream that ended, a batch line, a background or WebSocket response that
finished), priced from its ``usage`` as OpenAI bills it: at the service tier that served
it, the Batch API's discount, cached input and cache writes.

The bill is the truth tests compare a gateway's ledger with: what the fleet really spent.
It also feeds the fake Usage and Costs APIs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetgate.prices import PriceTable, default_prices

__all__ = ["Bill", "Charge"]


@dataclass(frozen=True, slots=True)
class Charge:
    """One billed answer: when (unix seconds), which project and model, at which service
    tier (``default``, ``flex``, ``priority``; ``batch`` for a batch line), its usage, and
    what it cost (None: the model has no price in the fake's table)."""

    at: float
    project: str
    model: str
    tier: str
    usage: dict[str, Any]
    dollars: float | None


class Bill:
    """Every charge so far, thread-safe (the server's loop adds, tests read)."""

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices or default_prices()
        self._charges: list[Charge] = []
        self._lock = threading.Lock()
        #: Unix seconds a charge is dated at (replaceable: a test's days gone by).
        self.clock: Callable[[], float] = time.time

    def charge(self, model: str, usage: dict[str, Any] | None, *, tier: str = "default", project: str = "proj_default",
               at: float | None = None) -> Charge | None:
        """Bill one answer's `usage` (None or empty: nothing billed)."""
        if not usage:
            return None
        dollars = self.prices.cost(model, usage, tier=tier)
        charge = Charge(self.clock() if at is None else at, project, model, tier, dict(usage), dollars)
        with self._lock:
            self._charges.append(charge)
        return charge

    def bills_writes(self, model: str) -> bool:
        """Whether `model` bills prompt-cache writes (and so reports them in its usage)."""
        price = self.prices.price(model)
        return price is not None and price.cache_write is not None

    def charges(self) -> list[Charge]:
        """Every charge so far, oldest first (a copy)."""
        with self._lock:
            return list(self._charges)

    def dollars(self) -> float:
        """What everything billed so far cost (unpriced answers count nothing)."""
        return sum(c.dollars or 0.0 for c in self.charges())

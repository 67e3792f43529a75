"""What the request path asks of the gateway that assembles it: the services the layers
are built from. The gateway is one such thing; the path never imports it."""

from __future__ import annotations

from typing import Protocol

from fleetgate._core import Breaker, Breakers, Lanes, Limiter, Quota
from fleetgate.budget.guard import Budgets
from fleetgate.budget.presets import Presets
from fleetgate.cache import AnswerCache
from fleetgate.chains import Chains
from fleetgate.config import GatewayConfig
from fleetgate.dedup import Collapser
from fleetgate.deployments import Deployments
from fleetgate.errors import FleetgateError
from fleetgate.fallback import Ladder
from fleetgate.metrics import GatewayMetrics
from fleetgate.modes import Modes
from fleetgate.path.call import Handoff
from fleetgate.prices import PriceTable
from fleetgate.privacy import Privacy
from fleetgate.prompts import Compressor, LayoutTracker, Savings
from fleetgate.router import Router
from fleetgate.scope import Scope
from fleetgate.stats import GatewayStats
from fleetgate.tracing import Tracer

__all__ = ["BackgroundWatcher", "Services"]


class BackgroundWatcher(Protocol):
    """Watches calls whose response runs on in the background until it ends
    (:class:`fleetgate.background.BackgroundCalls`)."""

    def room(self) -> FleetgateError | None:
        """None when one more can be watched, else the refusal."""

    def watch(self, handoff: Handoff) -> None:
        """Settle what `handoff` holds when its response ends."""

    def deployment_of(self, response_id: str) -> str | None:
        """The deployment (its key) a response this pod watches runs at (None: not watched here)."""


class Services(Protocol):
    config: GatewayConfig
    stats: GatewayStats
    metrics: GatewayMetrics | None
    tracer: Tracer | None
    presets: Presets
    compressor: Compressor | None
    prompt_savings: Savings
    layout: LayoutTracker | None
    router: Router
    modes: Modes
    ladder: Ladder
    cache: AnswerCache
    collapser: Collapser
    budgets: Budgets
    chains: Chains
    breakers: Breakers | None
    deployments: Deployments
    limiter: Limiter
    prices: PriceTable
    privacy: Privacy

    @property
    def background(self) -> BackgroundWatcher: ...

    def lanes_for(self, model: str) -> Lanes | None: ...

    def breaker_for(self, endpoint: str, model: str) -> Breaker | None: ...

    def quotas_for(self, model: str, sc: Scope) -> tuple[Quota | None, list[Quota]]: ...

    def warmed(self) -> None:
        """Wait until what calls need is loaded (or failed to load)."""

    async def warmed_async(self) -> None:
        """:meth:`warmed` without blocking the event loop."""

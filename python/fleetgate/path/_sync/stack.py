# Generated from fleetgate/path/_async/stack.py by scripts/unasync.py: edit that file, then run the script.
"""The request path: the ordered list of layers a gateway's config asks for, each one file
in this package (a step switched off is a layer left out), and the chain that runs a call
through them.

    record → shape → route → modes → cache → dedup → fallback → background → budget
           → lanes → retry → breaker → limit → upstream

To add a step: write ``_async/<step>.py`` (a :class:`Layer` with a module docstring that
states its contract with the others, and a test of that contract), place it in
:func:`layers` below, then run ``python scripts/unasync.py`` to generate its sync twin.
"""

from __future__ import annotations

from functools import partial
import httpx2

from fleetgate.path._sync.background import Background
from fleetgate.path._sync.breaker import Breaker
from fleetgate.path._sync.budget import Budget
from fleetgate.path._sync.cache import Cache
from fleetgate.path._sync.context import Context
from fleetgate.path._sync.dedup import Dedup
from fleetgate.path._sync.deploy import Deploy
from fleetgate.path._sync.fallback import Fallback
from fleetgate.path._sync.flex import FlexFallback
from fleetgate.path._sync.lanes import Lanes
from fleetgate.path._sync.layer import Layer, Next
from fleetgate.path._sync.limit import Limit
from fleetgate.path._sync.modes import Modes
from fleetgate.path._sync.record import Record
from fleetgate.path._sync.retry import Retry
from fleetgate.path._sync.route import Route
from fleetgate.path._sync.shape import Shape
from fleetgate.path._sync.upstream import Upstream
from fleetgate.path.call import Call
from fleetgate.path.services import Services


__all__ = ["chain", "layers"]


def layers(gateway: Services, inner: httpx2.BaseTransport) -> list[Layer]:
    """The layers of `gateway`'s path, in order, ending with the call to `inner`."""
    g, cfg = gateway, gateway.config
    stats, metrics = g.stats, g.metrics
    prompts = cfg.prompts
    found: list[Layer | None] = [
        Record(stats, metrics, g.tracer, g.privacy),
        Shape(g.presets, prompts, g.compressor, g.prompt_savings, g.layout, metrics, g.privacy,
              Context(g.chains, cfg.server_context, inner, stats) if cfg.server_context.enabled else None)
        if cfg.presets or g.compressor is not None or g.layout is not None or cfg.server_context.enabled else None,
        Route(g.router, cfg.model_override, stats) if g.router.active or cfg.model_override else None,
        Modes(g.modes, cfg.modes, g.ladder, g.cache, stats, g.privacy),
        Cache(g.cache) if g.cache.store is not None else None,
        Dedup(g.collapser) if cfg.dedup.enabled else None,
        Fallback(g.ladder, g.budgets, g.cache, FlexFallback(cfg.fallback.flex_fallback, stats),
                 Background(g.background)),
        Budget(g.budgets, stats, cfg.background.lease_seconds) if g.budgets.active else None,
        Lanes(g.lanes_for, stats, metrics) if cfg.lanes.concurrency is not None or cfg.lanes.models else None,
        Retry(cfg.max_upstream_retries, stats, metrics,
              Deploy(g.deployments, g.breaker_for, stats, metrics,
                     g.budgets if g.budgets.of_deployments else None, cfg.background.lease_seconds)
              if g.deployments else None),
        Breaker(g.breaker_for, stats) if g.breakers is not None else None,
        Limit(g.limiter, g.quotas_for, stats, metrics),
        Upstream(inner, g.modes, g.prices, metrics, g.layout),
    ]
    return [layer for layer in found if layer is not None]


def chain(path: list[Layer]) -> Next:
    """One callable running a call through `path`: each layer handed the rest as `next`."""
    run: Next = _end
    for layer in reversed(path):
        run = partial(layer.handle, next=run)
    return run


def _end(call: Call) -> httpx2.Response:
    raise RuntimeError("the request path ended without an upstream layer")


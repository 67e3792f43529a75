"""The background calls in Prometheus: ``fleetgate_background_pending{scope}`` (``pod``:
watched by this pod; ``fleet``: not yet settled anywhere, read from the store when
scraped) and ``fleetgate_background_settled_total{how}`` (``usage``, ``nothing``,
``worst``). ``gate.metrics_app()`` serves them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetgate.background.polling import SETTLED
from fleetgate.stats import GatewayStats

if TYPE_CHECKING:
    from fleetgate.background.watcher import BackgroundCalls

__all__ = ["BackgroundCollector"]

log = logging.getLogger("fleetgate")


class BackgroundCollector(Collector):
    """The pending and settled background calls of one gateway, read when scraped."""

    def __init__(self, calls: BackgroundCalls, stats: GatewayStats) -> None:
        self.calls, self.stats = calls, stats

    def collect(self) -> Iterator[Metric]:
        pending = GaugeMetricFamily("fleetgate_background_pending", "Background responses not yet settled",
                                    labels=["scope"])
        pending.add_metric(["pod"], self.calls.pending())
        try:
            pending.add_metric(["fleet"], self.calls.fleet_pending())
        except Exception as e:  # noqa: BLE001 - the pod's own figure is still served
            log.warning("fleetgate: could not count the fleet's background responses (%s)", e)
        settled = CounterMetricFamily("fleetgate_background_settled", "Background responses settled, by how",
                                      labels=["how"])
        for how in SETTLED:
            settled.add_metric([how], self.stats[f"background_settled_{how}"])
        yield from (pending, settled)

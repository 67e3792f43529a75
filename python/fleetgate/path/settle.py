"""Settling after the answer: a reservation (quota or budget) that cannot be settled is
counted and logged, never raised at the caller, whose answer is already in; it lapses by
itself (a quota refills, a budget reservation expires after ``reservation_seconds``)."""

from __future__ import annotations

import logging

from fleetgate.errors import FleetgateError
from fleetgate.stats import GatewayStats

__all__ = ["settle_failed"]

log = logging.getLogger("fleetgate")


def settle_failed(stats: GatewayStats, error: FleetgateError) -> None:
    stats.count("settle_failures")
    log.warning("fleetgate: could not settle a reservation (%s); it lapses by itself", error)

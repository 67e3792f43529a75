"""The automatic mode judged from signals: entered as soon as a trigger holds, left only once
every trigger of it stayed under ``exit_ratio`` for ``exit_after_seconds``."""

from __future__ import annotations

import math
from typing import cast

from fleetgate.config import MODES, ModeName, ModeSettings, ModeTrigger
from fleetgate.modes.signals import Signals
from fleetgate.modes.states import _LEVEL

__all__ = ["Hysteresis"]


_SIGNALS = ("error_rate", "p95_seconds", "open_breakers", "isolated_breakers", "budget_share")
_COUNTS = ("open_breakers", "isolated_breakers")


class Hysteresis:
    """The automatic mode from a stream of signals: up as soon as a trigger holds, down only
    after ``exit_after_seconds`` under ``exit_ratio`` of every trigger that holds the mode.
    Pure: no clock or I/O of its own (``step`` is given the time)."""

    def __init__(self, settings: ModeSettings) -> None:
        self.settings = settings
        self.mode: ModeName = "full"
        self.reason = ""
        self._cause: str | None = None
        self._calm_since: float | None = None

    def step(self, signals: Signals, now: float) -> bool:
        """Judge `signals` at `now` (seconds, any monotonic clock); True when the mode changed."""
        worst, reason, cause = self._worst(signals, 1.0)
        if _LEVEL[worst] > _LEVEL[self.mode]:
            self.mode, self.reason, self._cause, self._calm_since = worst, reason, cause, None
            return True
        held, _, _ = self._worst(signals, self.settings.exit_ratio, unknown_holds=self._cause)
        if _LEVEL[held] >= _LEVEL[self.mode]:
            self._calm_since = None
            return False
        if self._calm_since is None:
            self._calm_since = now
        if now - self._calm_since < self.settings.exit_after_seconds:
            return False
        was = self.mode
        self.mode, self._calm_since = held, None
        self._cause = None if held == "full" else self._cause
        self.reason = f"left {was}: its signals stayed under {self.settings.exit_ratio:g} of the triggers" \
                      f" for {self.settings.exit_after_seconds:g}s"
        return True

    def _worst(self, s: Signals, ratio: float, unknown_holds: str | None = None) -> tuple[ModeName, str, str | None]:
        """The most severe mode a trigger holds at `ratio` of its thresholds, why, and which
        signal. A rate nobody measured (too few calls) holds when it is `unknown_holds`:
        a mode entered on errors is left on evidence, not on silence."""
        for mode in reversed(MODES[1:]):
            trigger = self.settings.enter.get(cast(ModeName, mode))
            if trigger is None:
                continue
            found = _holds(trigger, s, ratio, unknown_holds)
            if found is not None:
                return cast(ModeName, mode), found[0], found[1]
        return "full", "", None


def _holds(trigger: ModeTrigger, s: Signals, ratio: float, unknown_holds: str | None) -> tuple[str, str] | None:
    for name in _SIGNALS:
        threshold = getattr(trigger, name)
        if threshold is None:
            continue
        value = getattr(s, name)
        if value is None:
            if name == unknown_holds:
                return f"{name} not measured yet (too few calls)", name
            continue
        at = max(1, math.ceil(threshold * ratio)) if name in _COUNTS else threshold * ratio
        if value >= at:
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            return f"{name.replace('_', ' ')} {shown} ≥ {at:g}", name
    return None

"""The modes a pod can be in, as states: which mode, since when and why, and an operator's
mode checked before it is set."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

from fleetgate.config import MODES, ModeName
from fleetgate.errors import ConfigError

__all__ = ["MODE_HEADER", "ModeState", "change_reason", "mode_level", "operator_mode"]

#: The response header naming the mode that served a gated call.
MODE_HEADER = "x-fleetgate-mode"
_LEVEL = {name: level for level, name in enumerate(MODES)}


def mode_level(mode: str) -> int:
    """0 for ``full`` up to 4 for ``maintenance``; raises ConfigError for an unknown name."""
    try:
        return _LEVEL[mode]
    except KeyError:
        raise ConfigError(f"unknown mode {mode!r}: one of {', '.join(MODES)}") from None


@dataclass(frozen=True, slots=True)
class ModeState:
    """The mode a pod is in, and why."""

    mode: ModeName
    #: ``"auto"`` (its signals), ``"operator"`` (``fleetgate mode set``) or ``"default"``.
    source: Literal["default", "auto", "operator"] = "default"
    reason: str = ""
    #: Unix seconds it began, and when an operator's mode ends (None: until cleared or its cause ends).
    since: float = 0.0
    until: float | None = None

    @property
    def level(self) -> int:
        return _LEVEL[self.mode]

    def retry_after(self, fallback: float | None) -> float | None:
        return max(0.0, self.until - time.time()) if self.until is not None else fallback


_FULL = ModeState("full")


def operator_mode(mode: str, for_seconds: float | None, reason: str) -> ModeState:
    """An operator's mode from now, checked: a known mode, a positive duration (None: until cleared)."""
    mode_level(mode)
    if for_seconds is not None and for_seconds <= 0:
        raise ConfigError(f"a mode's duration must be positive, not {for_seconds}")
    now = time.time()
    return ModeState(cast(ModeName, mode), "operator", reason, now, None if for_seconds is None else now + for_seconds)


def change_reason(was: ModeState, now: ModeState) -> str:
    """Why a pod went from `was` to `now`, never empty: `now`'s reason, or, where it gives
    none (the default mode has none), what ended `was`."""
    if now.reason:
        return now.reason
    if now.source == "operator":
        return "set by an operator"
    if now.source == "auto":
        return "judged from this pod's signals"
    if was.source == "operator":
        if was.until is not None and was.until <= time.time():
            return "the operator's mode expired"
        return "the operator's mode was cleared"
    if was.source == "auto":
        return "the signals recovered"
    return "back to the default mode"

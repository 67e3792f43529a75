"""How a degraded mode serves a call: the decisions the request path's modes layer acts on
(:mod:`fleetgate.path._async.modes`), with no I/O of their own.

- ``reduced``: an optional feature is refused; every other call goes to the cheaper model
  of ``[fallback] models`` with its output capped at ``reduced_max_output_tokens``.
- ``cached-only`` and ``static``: answered from the cache or with the static answer, else
  refused; ``maintenance``: held until it ends, then deferred or refused.
- A refusal names the mode, who set it and why, and when to try again.
"""

from __future__ import annotations

from typing import Any

from fleetgate.budget.presets import cap_output
from fleetgate.config import ModeSettings
from fleetgate.errors import ServiceDegraded
from fleetgate.modes.states import ModeState

__all__ = ["degraded", "optional_off", "reduced_body"]


def optional_off(settings: ModeSettings, feature: str | None) -> bool:
    """Whether reduced mode turns off calls of `feature` (one of ``optional_features``)."""
    return feature is not None and feature in settings.optional_features


def reduced_body(settings: ModeSettings, cheaper: dict[str, Any] | None, endpoint: str,
                 body: dict[str, Any]) -> dict[str, Any] | None:
    """The body reduced mode sends instead of `body`: the `cheaper` model's body (when the
    ladder has one), its output capped; None when it goes as it is."""
    cap = settings.reduced_max_output_tokens
    if cheaper is None and cap is None:
        return None
    reduced = dict(cheaper or body)
    if cap is not None:
        cap_output(endpoint, reduced, cap)
    return reduced


def degraded(state: ModeState, settings: ModeSettings, why: str) -> ServiceDegraded:
    """The refusal of a call that `state` does not serve, for `why`: who set the mode, why,
    and when to try again."""
    if state.source == "operator":
        source, ends = "set by an operator", "; `fleetgate mode show` says until when, `fleetgate mode clear` ends it"
    else:
        source, ends = "entered by itself", "; it ends when upstream recovers: retry after retry_after"
    return ServiceDegraded(f"the fleet is in {state.mode} mode ({source}: {state.reason}): {why}{ends}", state.mode,
                           state.retry_after(settings.exit_after_seconds))

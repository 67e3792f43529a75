"""The fleet's degradation modes: how much of the service a pod gives when upstream,
the budget or an operator says it cannot give everything.

=============  ===========================================================================
``full``       everything, as configured
``reduced``    the ``[fallback] models`` cheaper model, output capped at
               ``[modes] reduced_max_output_tokens``, ``optional_features`` refused
``cached-only`` answers from the cache (exact, then semantic) whatever the request's
               temperature; a miss gets the static answer, else ``ServiceDegraded``
``static``     the ``[fallback] static_answer``, else ``ServiceDegraded``
``maintenance`` requests wait (within their deadline) and are answered when it ends;
               past the deadline they go to ``[fallback] defer_to`` when set
=============  ===========================================================================

A mode is entered by itself when a trigger of ``[modes.enter.<mode>]`` holds (error rate
and latency of this pod's upstream calls, breakers open across the fleet, a global budget's
spent share), and left only once every trigger of it fell under ``exit_ratio`` of its
threshold and stayed there for ``exit_after_seconds``: a signal wavering at a threshold
does not flap the mode. In a mode entered by itself that sends nothing upstream, one
request per ``probe_every_seconds`` still goes (in cached-only, one the cache could not
answer), so that recovery is seen. With Redis each pod says what its own signals judge,
and every pod serves in the worse of its own judgement and the mode at least ``quorum``
of the live pods judge: an outage seen by most pods moves the whole fleet, a pod too quiet
to measure follows it, and one pod with a bad network does not move the others.

An operator's mode (``fleetgate mode set cached-only --for 30m``; ``gate.modes.set`` in
one process) wins over the automatic one until it expires or is cleared. It is kept in
Redis (``fg:mode``) and read by every pod every ``evaluate_every_seconds`` (at most a
second). Each pod publishes the mode it is in (``fg:mode:pods``) for ``fleetgate mode show``.

Each gated answer names the mode that served it in ``x-fleetgate-mode``, the metrics
(``fleetgate_mode``, ``fleetgate_mode_answers_total``) and its log record.

The states live in :mod:`.states`, what they are judged on in :mod:`.signals`, the judging
in :mod:`.hysteresis`, the operator's mode and the pods' in Redis in :mod:`.store`, a
gateway's :class:`Modes` with its judging thread in :mod:`.service`, and how a degraded
mode serves a call in :mod:`.degrade` (the request path's modes layer acts on it).
"""

from __future__ import annotations

from fleetgate.config import MODES
from fleetgate.modes.hysteresis import Hysteresis
from fleetgate.modes.service import Modes
from fleetgate.modes.signals import Signals, fleet_signals as fleet_signals
from fleetgate.modes.states import MODE_HEADER, ModeState, change_reason, mode_level, operator_mode as operator_mode
from fleetgate.modes.store import ModeStore, PodMode

__all__ = ["MODES", "MODE_HEADER", "ModeState", "ModeStore", "Modes", "PodMode", "Signals", "Hysteresis", "change_reason", "mode_level"]

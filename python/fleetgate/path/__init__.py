"""The request path: one ordered stack of layers, written once (``_async``, the source;
``_sync``, generated from it), that every gated call goes through, and the transports
that adapt it to the openai SDK. See :mod:`fleetgate.path._async.stack` for the order and
how to add a step, and each layer's module for its contract with the others.
"""

from fleetgate.path._async.transport import AsyncGateTransport
from fleetgate.path._sync.transport import GateTransport

__all__ = ["AsyncGateTransport", "GateTransport"]

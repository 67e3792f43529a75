"""Responses made with ``background: true``: answered at once (``queued``, no usage), their
cost known only when they end. The gateway keeps the call's quota reservation and budget
hold, watches the response until it ends (polling it, or told by a webhook:
:mod:`fleetgate.webhooks`), then settles both from the usage it reports, at the service
tier that served it. See :mod:`fleetgate.background.watcher` for the flow,
:mod:`~fleetgate.background.polling` and :mod:`~fleetgate.background.settling` for what it
decides and does, and :mod:`~fleetgate.background.pending` for how a fleet finishes a dead
pod's calls.

    client = gate.openai()
    r = client.responses.create(model="gpt-4.1-mini", input="…", background=True)
    gate.background.pending()          # 1: watched until it ends, then settled
"""

from fleetgate.background.collector import BackgroundCollector
from fleetgate.background.pending import PendingCall
from fleetgate.background.watcher import BackgroundCalls

__all__ = ["BackgroundCalls", "BackgroundCollector", "PendingCall"]

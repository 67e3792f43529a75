"""What an answer says of a response that runs on in the background (``background: true``,
answered ``queued`` or ``in_progress`` with no usage): its id, and the statuses of a
response still running or ended. The call's holds then travel on a
:class:`~fleetgate.path.call.Handoff` to the watcher (:mod:`fleetgate.background`)."""

from __future__ import annotations

import json
from typing import Any

from fleetgate.path.call import Call

__all__ = ["ACTIVE", "ENDED", "background_answer"]

#: Statuses of a response still running, and of one that ended.
ACTIVE = frozenset({"queued", "in_progress"})
ENDED = frozenset({"completed", "failed", "cancelled", "incomplete"})


def background_answer(call: Call, body: bytes) -> str | None:
    """The response id when `body` answers `call` with a response still running in the
    background (a Responses call with ``background: true``, answered ``queued`` or
    ``in_progress``); None for any other answer."""
    if call.endpoint != "/responses" or call.body.get("background") is not True:
        return None
    try:
        answer: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or answer.get("status") not in ACTIVE:
        return None
    response_id = answer.get("id")
    return response_id if isinstance(response_id, str) and response_id else None

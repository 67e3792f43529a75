"""What the request path hands over when an answer says its response runs in the
background (``background: true``, answered ``queued`` or ``in_progress`` with no usage):
the call, the response's id, and what the call holds until its cost is known (its quota
reservation, its budget hold). The path's layers put their holds on the handoff instead
of settling them (:attr:`fleetgate.path.call.Outcome.later`); the background layer hands
it to the watcher (:class:`fleetgate.background.BackgroundCalls`), which settles them when
the response ends."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleetgate._core import Reservation

if TYPE_CHECKING:
    from fleetgate.budget.guard import Hold
    from fleetgate.path.call import Call

__all__ = ["ACTIVE", "ENDED", "Handoff", "background_answer"]

#: Statuses of a response still running, and of one that ended.
ACTIVE = frozenset({"queued", "in_progress"})
ENDED = frozenset({"completed", "failed", "cancelled", "incomplete"})


@dataclass(eq=False)
class Handoff:
    """A background call on its way to the watcher, with what it holds."""

    call: Call
    response_id: str
    #: The limit layer's reservation on the call's quotas (None: no quota applies).
    quota: Reservation | None = None
    #: The budget layer's hold (None: no budget holds the call).
    hold: Hold | None = None


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

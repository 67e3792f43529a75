"""``GET /v1/models``: the models the fake serves, as OpenAI lists them. They are the
models of the price table the fake bills with (fleetgate's shipped table, unless the bill
was given another) and those its config sets limits for, so a client can list what it may
call and what it will be billed for. The table's ``ft:<base>`` entries price fine-tunes and
are not models of their own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fleetgate.prices import PriceTable

__all__ = ["model_list"]

#: When every listed model was "created" (the fake has no history).
_CREATED = 1_700_000_000


def model_list(prices: PriceTable, configured: Iterable[str]) -> dict[str, Any]:
    """The body of ``GET /v1/models``."""
    names = sorted({*(n for n in prices.models if not n.startswith("ft:")), *configured})
    return {"object": "list",
            "data": [{"id": n, "object": "model", "created": _CREATED, "owned_by": "fleetgate-fake"} for n in names]}

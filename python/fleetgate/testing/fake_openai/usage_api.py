"""The organization's Usage and Costs APIs, served from the fake's bill, as OpenAI serves them
to an admin key:

    GET /v1/organization/usage/completions   tokens and requests of chat, responses, batch lines
    GET /v1/organization/usage/embeddings    tokens and requests of embeddings
    GET /v1/organization/costs               dollars, in daily buckets

A request is answered in four steps:

1. The key: only an admin key (``sk-admin-…``) may read them (401 with none, 403 with a
   project key, as OpenAI answers a key without the ``api.usage.read`` scope).
2. The query: ``start_time`` (required, inclusive) and ``end_time`` (exclusive, default now)
   in unix seconds; ``bucket_width`` (``1m``, ``1h``, ``1d``; the Costs API only ``1d``);
   ``limit`` buckets per page (defaults and maxima as OpenAI's); ``group_by`` fields and
   filters (``project_ids``, ``models``, ``batch``, ``line_items``). Unknown values are 400s.
3. The buckets: every bucket of the range from the ``page`` cursor on, empty ones too
   (``results: []``), aligned to whole minutes, hours or UTC days, up to ``limit`` of them;
   ``has_more`` and ``next_page`` (an opaque cursor) say where the next page starts.
4. The results of a bucket: the charges billed in it, summed per group. Costs come as line
   items ``"<model>, input_tokens"`` (cached input and cache writes included) and
   ``"<model>, output_tokens"``, with `` (<tier>)`` added for batch, flex and priority.

The bill (:class:`~fleetgate.testing.fake_openai.billing.Bill`) is the only source: what the
fake charged is what these APIs report, to the cent.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from fleetgate.estimate import usage_counts
from fleetgate.prices import price_tier
from fleetgate.testing.fake_openai.api import ApiError, new_id
from fleetgate.testing.fake_openai.billing import Bill, Charge

__all__ = ["UsageApi"]

_WIDTHS = {"1m": 60, "1h": 3600, "1d": 86_400}
#: Buckets per page by width: (default, most), as OpenAI documents them.
_USAGE_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}
_COSTS_LIMITS = (7, 180)
#: What each endpoint can group by here (OpenAI's other fields name users and keys the
#: fake does not record).
_COMPLETIONS_GROUPS = ("project_id", "model", "batch", "service_tier")
_EMBEDDINGS_GROUPS = ("project_id", "model")
_COSTS_GROUPS = ("project_id", "line_item")
_ADMIN_PREFIX = "sk-admin-"

#: What a bucket's results are summed from: a charge (usage), or one of its line items (costs).
_Member = TypeVar("_Member")


@dataclass(frozen=True, slots=True)
class _Query:
    """A checked request: the range, its buckets and where this page starts."""

    start: int
    end: int
    width: int
    first: int
    limit: int
    group_by: tuple[str, ...]
    projects: frozenset[str]

    def buckets(self) -> tuple[list[int], int | None]:
        """This page's bucket starts, and the next page's first one (None: this is the last)."""
        starts: list[int] = []
        at = self.first
        while at < self.end and len(starts) < self.limit:
            starts.append(at)
            at += self.width
        return starts, (at if at < self.end else None)


class UsageApi:
    """The Usage and Costs endpoints over one :class:`Bill`."""

    def __init__(self, bill: Bill, clock: Callable[[], float] = time.time) -> None:
        self.bill = bill
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/organization/usage/completions", self.completions),
            web.get("/v1/organization/usage/embeddings", self.embeddings),
            web.get("/v1/organization/costs", self.costs),
        ]

    # -- endpoints ---------------------------------------------------------------------

    async def completions(self, request: web.Request) -> web.Response:
        _check_admin(request)
        query = self._query(request, _COMPLETIONS_GROUPS, _USAGE_LIMITS)
        batch = _flag(request, "batch")
        models = frozenset(_values(request, "models"))

        def grouped(c: Charge) -> list[tuple[dict[str, Any], Charge]]:
            kept = (_is_completion(c) and (not models or c.model in models)
                    and (batch is None or (c.tier == "batch") == batch))
            return [(_fields(c), c)] if kept else []

        return self._page(query, grouped, _completions_result)

    async def embeddings(self, request: web.Request) -> web.Response:
        _check_admin(request)
        query = self._query(request, _EMBEDDINGS_GROUPS, _USAGE_LIMITS)
        models = frozenset(_values(request, "models"))

        def grouped(c: Charge) -> list[tuple[dict[str, Any], Charge]]:
            return [(_fields(c), c)] if not _is_completion(c) and (not models or c.model in models) else []

        return self._page(query, grouped, _embeddings_result)

    async def costs(self, request: web.Request) -> web.Response:
        _check_admin(request)
        width = request.query.get("bucket_width", "1d")
        if width != "1d":
            raise ApiError(400, f"Invalid value for 'bucket_width': {width!r}. The costs endpoint supports only '1d'.",
                           param="bucket_width", code="invalid_value")
        query = self._query(request, _COSTS_GROUPS, {"1d": _COSTS_LIMITS})
        wanted_items = frozenset(_values(request, "line_items"))

        def grouped(c: Charge) -> list[tuple[dict[str, Any], tuple[float, int]]]:
            return [({"project_id": c.project, "line_item": item}, (dollars, tokens))
                    for item, dollars, tokens in _line_items(self.bill, c) if not wanted_items or item in wanted_items]

        return self._page(query, grouped, _costs_result)

    # -- the shared steps ---------------------------------------------------------------

    def _query(self, request: web.Request, groups: tuple[str, ...],
               limits: dict[str, tuple[int, int]]) -> _Query:
        start = _int(request, "start_time")
        if start is None:
            raise ApiError(400, "Missing required parameter: 'start_time'.", param="start_time",
                           code="missing_required_parameter")
        end = _int(request, "end_time")
        end = int(self.clock()) + 1 if end is None else end
        if end <= start:
            raise ApiError(400, f"Invalid 'end_time': {end} is not after 'start_time' ({start}).", param="end_time",
                           code="invalid_value")
        width_name = request.query.get("bucket_width", "1d")
        if width_name not in limits:
            raise ApiError(400, f"Invalid value for 'bucket_width': {width_name!r}. Supported values are: "
                           f"{', '.join(repr(w) for w in limits)}.", param="bucket_width", code="invalid_value")
        width = _WIDTHS[width_name]
        default, most = limits[width_name]
        limit = _int(request, "limit")
        limit = default if limit is None else limit
        if not 1 <= limit <= most:
            raise ApiError(400, f"Invalid 'limit': {limit}. With bucket_width={width_name} it must be between 1 and "
                           f"{most}.", param="limit", code="invalid_value")
        group_by = tuple(_values(request, "group_by"))
        for g in group_by:
            if g not in groups:
                raise ApiError(400, f"Invalid value for 'group_by': {g!r}. Supported values here are: "
                               f"{', '.join(groups)}.", param="group_by", code="invalid_value")
        aligned = start - start % width
        first = _cursor(request.query.get("page"), aligned, end, width)
        return _Query(start, end, width, first, limit, group_by, frozenset(_values(request, "project_ids")))

    def _charges(self, query: _Query) -> list[Charge]:
        return [c for c in self.bill.charges()
                if query.start <= c.at < query.end and (not query.projects or c.project in query.projects)]

    def _page(self, query: _Query, grouped: Callable[[Charge], Iterable[tuple[dict[str, Any], _Member]]],
              result: Callable[[list[_Member], dict[str, Any]], dict[str, Any]]) -> web.Response:
        """This page's buckets: each charge in its bucket, as the members `grouped` makes of
        it (with the fields they group by), and one `result` per group of members."""
        starts, following = query.buckets()
        buckets: dict[int, defaultdict[tuple[Any, ...], list[_Member]]] = {at: defaultdict(list) for at in starts}
        for c in self._charges(query):
            groups = buckets.get(int(c.at) - (int(c.at) - query.first) % query.width)
            if groups is None:  # on another page
                continue
            for fields, member in grouped(c):
                groups[tuple(fields[g] for g in query.group_by)].append(member)
        data = [_bucket(at, query.width, [result(members, dict(zip(query.group_by, key))) for key, members
                                          in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0]))])
                for at, groups in buckets.items()]
        return _page_response(data, following)


# -- pieces --------------------------------------------------------------------------------


def _check_admin(request: web.Request) -> None:
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    if not key:
        raise ApiError(401, "You didn't provide an API key. You need to provide your API key in an Authorization "
                       "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).", code="missing_api_key")
    if not key.startswith(_ADMIN_PREFIX):
        raise ApiError(403, "You have insufficient permissions for this operation. Missing scopes: api.usage.read. "
                       "The organization's Usage and Costs APIs need an admin API key (sk-admin-…), which an "
                       "organization owner creates under Admin keys.", type="invalid_request_error",
                       code="insufficient_permissions")


def _values(request: web.Request, name: str) -> list[str]:
    """A list parameter, sent as ``name[]=a&name[]=b`` (the SDK) or ``name=a&name=b``."""
    return [*request.query.getall(f"{name}[]", []), *request.query.getall(name, [])]


def _int(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid type for '{name}': expected an integer, got {raw!r}.", param=name,
                       code="invalid_type") from None


def _flag(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.lower() not in ("true", "false"):
        raise ApiError(400, f"Invalid value for '{name}': expected true or false, got {raw!r}.", param=name,
                       code="invalid_value")
    return raw.lower() == "true"


def _cursor(page: str | None, first: int, end: int, width: int) -> int:
    """Where a page starts: the range's first bucket, or the one a ``next_page`` named."""
    if page is None:
        return first
    try:
        at = int(base64.urlsafe_b64decode(page.removeprefix("page_").encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        at = -1
    if at < first or at >= end or (at - first) % width:
        raise ApiError(400, f"Invalid 'page': {page!r} is not a cursor of this query; pass the next_page of the "
                       "previous answer, with the same start_time, end_time and bucket_width.", param="page",
                       code="invalid_value")
    return at


def _page_response(data: list[dict[str, Any]], following: int | None) -> web.Response:
    next_page = None if following is None else "page_" + base64.urlsafe_b64encode(str(following).encode()).decode()
    body = {"object": "page", "data": data, "has_more": following is not None, "next_page": next_page}
    return web.json_response(body, headers={"x-request-id": new_id("req")})


def _bucket(at: int, width: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "bucket", "start_time": at, "end_time": at + width, "results": results}


def _is_completion(c: Charge) -> bool:
    """Chat, responses and their batch lines have output; embeddings do not."""
    return "completion_tokens" in c.usage or "output_tokens" in c.usage


def _fields(c: Charge) -> dict[str, Any]:
    """What the usage endpoints group a charge by."""
    return {"project_id": c.project, "model": c.model, "batch": c.tier == "batch", "service_tier": c.tier}


def _completions_result(charges: list[Charge], group: dict[str, Any]) -> dict[str, Any]:
    prompt = cached = written = output = requests = 0
    for c in charges:
        counts = usage_counts(c.usage)
        prompt += counts.prompt
        cached += counts.cached
        written += counts.written
        output += counts.output
        requests += 1
    return {
        "object": "organization.usage.completions.result",
        "input_tokens": prompt, "output_tokens": output, "num_model_requests": requests,
        "input_cached_tokens": cached, "input_cache_write_tokens": written,
        "input_uncached_tokens": prompt - cached - written, "input_text_tokens": prompt - cached - written,
        "input_cached_text_tokens": cached, "output_text_tokens": output,
        "input_audio_tokens": 0, "output_audio_tokens": 0,
        "project_id": group.get("project_id"), "model": group.get("model"), "batch": group.get("batch"),
        "service_tier": group.get("service_tier"), "api_key_id": None, "user_id": None, "api_source": None,
    }


def _embeddings_result(charges: list[Charge], group: dict[str, Any]) -> dict[str, Any]:
    return {
        "object": "organization.usage.embeddings.result",
        "input_tokens": sum(usage_counts(c.usage).prompt for c in charges), "num_model_requests": len(charges),
        "project_id": group.get("project_id"), "model": group.get("model"), "api_key_id": None, "user_id": None,
    }


def _costs_result(items: list[tuple[float, int]], group: dict[str, Any]) -> dict[str, Any]:
    grouped_items = "line_item" in group
    return {
        "object": "organization.costs.result",
        "amount": {"value": sum(dollars for dollars, _ in items), "currency": "usd"},
        "line_item": group.get("line_item"),
        "project_id": group.get("project_id"),
        "quantity": sum(tokens for _, tokens in items) if grouped_items else None,
        "quantity_unit": "tokens" if grouped_items else None,
        "api_key_id": None,
        "user_id": None,
        "api_source": None,
    }


def _line_items(bill: Bill, c: Charge) -> list[tuple[str, float, int]]:
    """A charge as line items: (name, dollars, tokens); they add up to what it was billed."""
    price = bill.prices.price(c.model)
    if price is None or c.dollars is None:
        return []
    counts = usage_counts(c.usage)
    tier = price_tier(c.tier)  # "batch" for a batch line
    rates = price.rates(counts.prompt, tier)
    suffix = "" if tier == "default" else f" ({tier})"
    items = [(f"{c.model}, input_tokens{suffix}", rates.dollars(counts.prompt, 0, counts.cached, counts.written),
              counts.prompt)]
    if _is_completion(c):
        items.append((f"{c.model}, output_tokens{suffix}", rates.dollars(0, counts.output), counts.output))
    return items

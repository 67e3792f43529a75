"""The fleet's ledger against what OpenAI billed: per day, project and model, the dollars the
ledger recorded, the dollars OpenAI's Costs API reports, their difference and its share.

A reconciliation, as :func:`reconcile` does it:

1. The days: ``since`` to ``until`` (both included) are UTC days, as OpenAI buckets them; the
   ledger must count its days in UTC too (``[budgets] timezone = "UTC"``, the default).
2. The ledger: each day's recorded spend, summed by model (:meth:`Ledger.report`). The ledger
   records no project: a gateway's spend is the spend of the one project its calls bill
   (``openai_project``, else the ``OPENAI_PROJECT_ID`` the SDK sends), and a fleet spread
   over several projects reconciles each with its own gateway config.
3. OpenAI's Costs API (``GET /v1/organization/costs``, daily buckets of the project grouped
   by line item, every page): a line item ``"<model>, <kind>"`` counts for its model; one that
   names no model counts under ``(other)``. With no project, the organization's whole bill.
4. OpenAI's Usage API (completions and embeddings, the same days and project, grouped by
   model): how many requests OpenAI counted per day and model, to tell a call the ledger
   missed from a price that differs.
5. The rows: one per day and model found on either side. A model's snapshot name
   (``gpt-4.1-mini-2025-04-14``) is reported as the model it is a snapshot of, so that the
   ledger's ``gpt-4.1-mini`` and OpenAI's snapshot meet. A row differs when its difference
   is over ``tolerance`` of the larger side.

Reading OpenAI's Usage and Costs APIs needs an admin key (``OPENAI_ADMIN_KEY``, an
``sk-admin-…`` key an organization owner creates); they are read directly, not through the
gateway (they are not calls to budget). OpenAI's costs of the current day are still coming
in: reconcile the days that are over. Batch API spend is recorded in the ledger on the day
its results are collected, and billed by OpenAI on the day its lines ran: a batch that
spans midnight shows as a difference on both days that cancels out over the two.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from fleetgate._core import Ledger
from fleetgate.budget.report import days_between
from fleetgate.errors import ConfigError, FleetgateError

__all__ = ["ALL_PROJECTS", "OpenAISpend", "Reconciliation", "ReconciliationRow", "ReconcileError", "admin_client",
           "gateway_project", "openai_spend", "reconcile", "snapshot_of"]

#: The project of rows compared with the whole organization's bill (no project given).
ALL_PROJECTS = "(all projects)"
#: Buckets asked for per page: the most the Usage API gives for daily buckets.
PAGE_BUCKETS = 31
_SNAPSHOT = re.compile(r"^(?P<model>.+)-\d{4}-\d{2}-\d{2}$")
_OTHER = "(other)"
#: An API key as an error message may quote it (masked or not): never passed on.
_KEY = re.compile(r"\bsk-[\w*.…-]+")


class ReconcileError(FleetgateError):
    """OpenAI's Usage or Costs API could not be read (no admin key, a refusal, no answer)."""


def snapshot_of(model: str) -> str:
    """The model a dated snapshot is of (``gpt-4.1-mini-2025-04-14`` → ``gpt-4.1-mini``);
    any other name as it is."""
    found = _SNAPSHOT.match(model)
    return found.group("model") if found else model


@dataclass(frozen=True, slots=True)
class ReconciliationRow:
    """One day's spend on one model in one project: what the fleet's ledger recorded and
    what OpenAI billed (dollars), and how many requests OpenAI counted (Usage API)."""

    day: str
    project: str
    model: str
    ledger: float
    openai: float
    openai_requests: int = 0

    @property
    def difference(self) -> float:
        """Dollars OpenAI billed beyond the ledger (negative: the ledger recorded more)."""
        return self.openai - self.ledger

    @property
    def share(self) -> float:
        """The difference as a share of the larger side (0 when both are 0; ±1 when one
        side has nothing)."""
        larger = max(abs(self.openai), abs(self.ledger))
        return self.difference / larger if larger else 0.0


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The rows of `since` to `until` (UTC days) for `project`, and the `tolerance` a row's
    share of difference may reach."""

    since: dt.date
    until: dt.date
    project: str
    tolerance: float
    rows: list[ReconciliationRow] = field(default_factory=list)

    def differing(self) -> list[ReconciliationRow]:
        """The rows whose difference is over the tolerance."""
        return [r for r in self.rows if abs(r.share) > self.tolerance]

    @property
    def ok(self) -> bool:
        """No row differs by more than the tolerance."""
        return not self.differing()

    @property
    def ledger(self) -> float:
        return sum(r.ledger for r in self.rows)

    @property
    def openai(self) -> float:
        return sum(r.openai for r in self.rows)

    def table(self) -> str:
        """The rows as an aligned text table with a total; rows over the tolerance marked ``!``."""
        header = ("day", "project", "model", "requests", "ledger", "openai", "difference", "share", "")
        cells = [(r.day, r.project, r.model, str(r.openai_requests), _dollars(r.ledger), _dollars(r.openai),
                  _dollars(r.difference, signed=True), _share(r.share), "!" if abs(r.share) > self.tolerance else "")
                 for r in self.rows]
        total = ReconciliationRow("total", "", "", self.ledger, self.openai)
        footer = ("total", "", "", str(sum(r.openai_requests for r in self.rows)), _dollars(total.ledger),
                  _dollars(total.openai), _dollars(total.difference, signed=True), _share(total.share), "")
        widths = [max(len(row[i]) for row in [header, *cells, footer]) for i in range(len(header))]
        left = {0, 1, 2, 8}

        def line(row: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

        rule = "  ".join("-" * w for w in widths[:-1])
        return "\n".join([line(header), rule, *(line(c) for c in cells), rule, line(footer)])


@dataclass(frozen=True, slots=True)
class OpenAISpend:
    """What OpenAI reports for each (day, model): dollars (Costs API), requests (Usage API)."""

    dollars: dict[tuple[str, str], float]
    requests: dict[tuple[str, str], int]


def reconcile(ledger: Ledger, client: openai.OpenAI, since: dt.date, until: dt.date | None = None, *,
              project: str | None, tolerance: float = 0.01, timezone: str = "UTC") -> Reconciliation:
    """The ledger's spend from `since` to `until` (default: yesterday, the last whole UTC
    day, or `since` if later) against what OpenAI billed `project` (None: the whole
    organization), read with `client` (an ``openai.OpenAI`` with an admin key). `timezone`:
    the ledger's (``[budgets] timezone``); it must be UTC. Raises ConfigError (bad days, a
    tolerance below 0, a ledger counting days in another time zone) or ReconcileError
    (OpenAI's APIs could not be read)."""
    if timezone != "UTC":
        raise ConfigError(f'the ledger counts its days in {timezone} ([budgets] timezone) and OpenAI in UTC, so their '
                          'days cannot be compared: set [budgets] timezone = "UTC" to reconcile')
    if tolerance < 0:
        raise ConfigError(f"the tolerance is a share of a day's spend (0.01 is 1%), at least 0; got {tolerance}")
    if until is None:
        until = max(since, dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1))
    days = days_between(since, until)
    recorded = _ledger_spend(ledger, days)
    billed = openai_spend(client, since, until, project=project)
    return Reconciliation(since, until, project or ALL_PROJECTS, tolerance,
                          _rows(project or ALL_PROJECTS, recorded, billed))


def gateway_project(configured: str | None) -> str | None:
    """The project a gateway's calls bill: `configured` (``openai_project``), else the
    ``OPENAI_PROJECT_ID`` the SDK sends; None: the key's default project."""
    return configured or os.environ.get("OPENAI_PROJECT_ID") or None


def openai_spend(client: openai.OpenAI, since: dt.date, until: dt.date, *, project: str | None) -> OpenAISpend:
    """Dollars (Costs API) and requests (Usage API) per (UTC day, model) from `since` to
    `until`, for `project` (None: every project), every page read. Raises ReconcileError."""
    start = int(dt.datetime.combine(since, dt.time(), dt.UTC).timestamp())
    end = int(dt.datetime.combine(until + dt.timedelta(days=1), dt.time(), dt.UTC).timestamp())
    usage = client.admin.organization.usage
    query: dict[str, Any] = {"start_time": start, "end_time": end, "bucket_width": "1d", "limit": PAGE_BUCKETS}
    if project is not None:
        query["project_ids"] = [project]
    dollars: defaultdict[tuple[str, str], float] = defaultdict(float)
    for day, result in _results(lambda **page: usage.costs(group_by=["line_item"], **query, **page)):
        amount = result.amount
        if amount is None or amount.value is None:
            continue
        if (amount.currency or "usd").lower() != "usd":
            raise ReconcileError(f"OpenAI reports costs in {amount.currency!r}; the ledger counts US dollars, so they "
                                 "cannot be compared")
        dollars[(day, _line_item_model(result.line_item))] += amount.value
    requests: defaultdict[tuple[str, str], int] = defaultdict(int)
    endpoints: list[Callable[..., Any]] = [usage.completions, usage.embeddings]
    for endpoint in endpoints:
        for day, result in _results(lambda **page: endpoint(group_by=["model"], **query, **page)):
            requests[(day, snapshot_of(result.model or _OTHER))] += result.num_model_requests
    return OpenAISpend(dict(dollars), dict(requests))


def admin_client(base_url: str | None = None, admin_key: str | None = None) -> openai.OpenAI:
    """An ``openai.OpenAI`` that reads the organization's Usage and Costs APIs with
    `admin_key` (default: ``OPENAI_ADMIN_KEY``), not through any gateway."""
    key = admin_key or os.environ.get("OPENAI_ADMIN_KEY")
    if not key:
        raise ReconcileError("reconciling reads OpenAI's Usage and Costs APIs, which need an admin key: set "
                             "OPENAI_ADMIN_KEY to an sk-admin-… key (an organization owner creates one under Admin "
                             "keys), or pass client=openai.OpenAI(admin_api_key=…)")
    return openai.OpenAI(admin_api_key=key, base_url=base_url)


# -- the steps -------------------------------------------------------------------------------


def _ledger_spend(ledger: Ledger, days: list[str]) -> dict[tuple[str, str], float]:
    spent: defaultdict[tuple[str, str], float] = defaultdict(float)
    for day, model, *_labels, dollars in ledger.report(days):
        spent[(day, snapshot_of(model) if model else "(none)")] += dollars
    return dict(spent)


def _results(fetch: Callable[..., Any]) -> Iterator[tuple[str, Any]]:
    """Every (UTC day, result) of every page `fetch(page=…)` answers, following next_page."""
    page: dict[str, str] = {}
    while True:
        try:
            answer = fetch(**page)
        except openai.APIStatusError as e:
            raise ReconcileError(_refused(e)) from e
        except openai.APIConnectionError as e:
            raise ReconcileError(f"OpenAI's Usage and Costs APIs did not answer ({e}); check the network and "
                                 "base_url, and try again") from e
        for bucket in answer.data:
            day = dt.datetime.fromtimestamp(bucket.start_time, dt.UTC).date().isoformat()
            for result in bucket.results:
                yield day, result
        if not answer.has_more or not answer.next_page:
            return
        page = {"page": answer.next_page}


def _refused(e: openai.APIStatusError) -> str:
    said = f"OpenAI's Usage and Costs APIs refused ({e.status_code}: {_KEY.sub('sk-…', e.message)})"
    if e.status_code in (401, 403):
        return (f"{said}: they need an admin key (sk-admin-…, with the api.usage.read scope) in OPENAI_ADMIN_KEY, "
                "not a project key")
    return f"{said}; check the days and project asked for"


def _line_item_model(line_item: str | None) -> str:
    """The model a line item ``"<model>, <kind>"`` is for, or ``(other)``."""
    if not line_item or ", " not in line_item:
        return _OTHER
    return snapshot_of(line_item.split(", ", 1)[0])


def _rows(project: str, recorded: dict[tuple[str, str], float], billed: OpenAISpend) -> list[ReconciliationRow]:
    keys = sorted({*recorded, *billed.dollars, *billed.requests})
    return [ReconciliationRow(day, project, model, recorded.get((day, model), 0.0),
                              billed.dollars.get((day, model), 0.0), billed.requests.get((day, model), 0))
            for day, model in keys]


def _dollars(value: float, *, signed: bool = False) -> str:
    shown = f"${abs(value):,.6f}"
    if not signed:
        return shown
    return (" " if shown == "$0.000000" else "+" if value > 0 else "-") + shown


def _share(value: float) -> str:
    shown = f"{abs(value):.2%}"
    return (" " if shown == "0.00%" else "+" if value > 0 else "-") + shown

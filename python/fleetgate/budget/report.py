"""Spend reports from the ledger: dollars by model, feature, user, team or day.

The ledger records each settled call's cost under its day (in ``[budgets] timezone``),
model, feature, user and team; a report sums the days asked for by one of them."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

from fleetgate._core import Ledger
from fleetgate.errors import ConfigError

__all__ = ["BY", "By", "days_between", "format_table", "spend_by"]

By = Literal["model", "feature", "user", "team", "day"]
BY: tuple[By, ...] = ("model", "feature", "user", "team", "day")
_COLUMN = {"day": 0, "model": 1, "feature": 2, "user": 3, "team": 4}
_MAX_DAYS = 400  # the ledger keeps a day's records this long


def days_between(since: dt.date, until: dt.date) -> list[str]:
    """Every day from `since` to `until`, both included, as ``YYYY-MM-DD``."""
    if until < since:
        raise ConfigError(f"the report ends ({until}) before it starts ({since}): swap them")
    count = (until - since).days + 1
    if count > _MAX_DAYS:
        raise ConfigError(f"a report spans at most {_MAX_DAYS} days (the ledger keeps no more); asked for {count}")
    return [(since + dt.timedelta(days=i)).isoformat() for i in range(count)]


def spend_by(ledger: Ledger, days: Sequence[str], by: By) -> list[tuple[str, float]]:
    """Dollars spent on `days` by `by`, most first (days in order for ``by="day"``)."""
    if by not in _COLUMN:
        raise ConfigError(f"cannot report spend by {by!r}: choose one of {', '.join(BY)}")
    totals: defaultdict[str, float] = defaultdict(float)
    for row in ledger.report(list(days)):
        label = str(row[_COLUMN[by]])
        totals[label or "(none)"] += row[5]
    if by == "day":
        return sorted(totals.items())
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def format_table(rows: Sequence[tuple[str, float]], by: By) -> str:
    """`rows` as an aligned text table with a total."""
    total = sum(dollars for _, dollars in rows)
    cells = [(name, f"${dollars:,.4f}") for name, dollars in rows] + [("total", f"${total:,.4f}")]
    left = max(len(by), *(len(name) for name, _ in cells))
    right = max(len("spend"), *(len(amount) for _, amount in cells))
    lines = [f"{by:<{left}}  {'spend':>{right}}", f"{'-' * left}  {'-' * right}"]
    lines += [f"{name:<{left}}  {amount:>{right}}" for name, amount in cells[:-1]]
    lines += [f"{'-' * left}  {'-' * right}", f"{cells[-1][0]:<{left}}  {cells[-1][1]:>{right}}"]
    return "\n".join(lines)

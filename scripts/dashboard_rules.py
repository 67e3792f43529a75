"""Every panel expression of the Grafana dashboards as Prometheus recording rules, so that
``promtool check rules`` parses each one (``make test-alerts`` runs it, and ``promtool
test rules`` evaluates a few of them: dashboards/*.rules.test.yml).

    python3 scripts/dashboard_rules.py dashboards/*.json --out DIR

writes ``DIR/<dashboard>.rules.yml`` per dashboard (JSON, which is YAML). Each target of
each panel becomes the rule ``dashboard:<panel title>:<refId>`` (in snake case), with the
Grafana variables replaced by values Prometheus accepts: ``$__rate_interval`` and the other
intervals by ``5m``, a template variable by its "All" value (its regex, e.g. ``.*``) or
else its current value. An expression naming a variable the dashboard does not define
fails here, with the panel named. Only the standard library: it runs before the virtualenv
exists.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Grafana's global variables, as values Prometheus parses.
GLOBALS = {
    "__rate_interval": "5m",
    "__interval": "5m",
    "__range": "5m",
    "__interval_ms": "300000",
    "__range_ms": "300000",
    "__range_s": "300",
}

#: ``$name``, ``${name}``, ``${name:format}`` and ``[[name]]``.
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\[\[(\w+)\]\]|\$(\w+)")


class DashboardError(Exception):
    pass


def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def variable_values(dashboard: dict[str, Any]) -> dict[str, str]:
    """A value for each template variable: its "All" value, else its current one."""
    values = dict(GLOBALS)
    for var in dashboard.get("templating", {}).get("list", []):
        current = var.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if var.get("includeAll") and (current in (None, "$__all") or var.get("allValue")):
            value = var.get("allValue") or ".*"
        elif isinstance(current, str) and current != "$__all":
            value = current
        else:
            value = "x"
        values[var["name"]] = value
    return values


def substitute(expr: str, values: dict[str, str], where: str) -> str:
    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g is not None)
        if name.isdigit():
            return match.group(0)  # a regex back-reference ("$1" in label_replace)
        if name not in values:
            raise DashboardError(f"{where}: ${name} is neither one of the dashboard's template variables "
                                 f"({', '.join(sorted(v for v in values if not v.startswith('__')))}) nor a "
                                 f"Grafana variable this check knows ({', '.join('$' + g for g in GLOBALS)}); "
                                 f"define it under templating, or add it to GLOBALS in {Path(__file__).name}")
        return values[name]

    return VARIABLE.sub(one, expr)


def snake(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "untitled"


def rules(path: Path) -> dict[str, Any]:
    """The recording rules of one dashboard file."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    values = variable_values(dashboard)
    found: list[dict[str, str]] = []
    seen: set[str] = set()
    for panel in panels(dashboard.get("panels", [])):
        for n, target in enumerate(panel.get("targets", [])):
            expr = target.get("expr")
            if not expr:
                continue
            title = panel.get("title") or f"panel {panel.get('id')}"
            record = f"dashboard:{snake(title)}:{snake(str(target.get('refId') or n))}"
            if record in seen:
                raise DashboardError(f"{path}: two targets are named {record} (same panel title and refId); "
                                     f"give the panels distinct titles or the targets distinct refIds")
            seen.add(record)
            where = f"{path}: panel {title!r}, target {target.get('refId') or n}"
            found.append({"record": record, "expr": substitute(expr, values, where)})
    if not found:
        raise DashboardError(f"{path}: no panel has a Prometheus expression (targets[].expr); is it a dashboard?")
    return {"groups": [{"name": f"dashboard {path.stem}", "rules": found}]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dashboards", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="The directory to write the rules files in.")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        for path in args.dashboards:
            target = args.out / f"{path.stem}.rules.yml"
            found = rules(path)
            target.write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
            print(f"{path}: {len(found['groups'][0]['rules'])} expressions → {target}")
    except (DashboardError, OSError, json.JSONDecodeError) as e:
        print(f"dashboard_rules: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

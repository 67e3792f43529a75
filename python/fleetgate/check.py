"""``fleetgate check``: what a pipeline runs before a deploy. It validates the config,
reaches Redis and the upstream (``GET /models``: no tokens spent) and each deployment with
its own key (with the room its quota has now), confirms that budgets
and metrics are on, names the models it names or the fleet gated lately that have no price
(``WARN`` when a budget would refuse their calls), and looks for secrets written into the
config file. Every problem is one line; any problem (``FAIL`` or ``WARN``) makes the
command exit non-zero.

    $ FLEETGATE_ENV=production fleetgate check --config fleetgate.toml
    ok    config: fleetgate.toml (production)
    FAIL  secrets: fleetgate.toml line 4 holds an OpenAI API key: read it from OPENAI_API_KEY instead
    ok    redis: redis://redis:6379 answers
    ...
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx2

from fleetgate.redis_clients import redacted_url
from fleetgate.config import GatewayConfig
from fleetgate.errors import ConfigError, FleetgateError

__all__ = ["Finding", "run_checks"]

_DEFAULT_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the check: what was checked, whether it passed, and what to do."""

    status: Literal["ok", "WARN", "FAIL"]
    area: str
    message: str

    def __str__(self) -> str:
        return f"{self.status:<5} {self.area}: {self.message}"


#: What a secret written into a config file looks like, and where it belongs instead.
_SECRETS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "an OpenAI API key: read it from OPENAI_API_KEY instead"),
    (re.compile(r"rediss?(?:\+cluster)?://[^\s\"'/@:]*:[^\s\"'/@]+@"),
     "a Redis password in a URL: set FLEETGATE_REDIS_URL in the environment instead"),
    (re.compile(r"^\s*[\"']?[\w.-]*(?:api_key|apikey|secret|password|token)[\w.-]*[\"']?\s*=\s*[\"'][^\"']+[\"']",
                re.IGNORECASE),
     "a credential: read it from the environment instead"),
)


def run_checks(config_path: str | Path | None, *, api_key: str | None = None, timeout: float = 5.0,
               **overrides: Any) -> list[Finding]:
    """Every check, in order; `overrides` are config fields (``redis_url=…``, ``env=…``).
    A config that does not load stops the checks that need it."""
    findings: list[Finding] = []
    path = Path(config_path) if config_path is not None else None
    if path is not None:
        findings.extend(_secrets(path))
    config = _config(path, overrides, findings)
    if config is None:
        return findings
    quiet = logging.getLogger("fleetgate")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # what goes wrong is said once, as a finding, not logged too
    gateway = None
    try:
        gateway = _gateway(config, findings)
        reached = _redis(config, gateway)
        findings.append(reached)
        findings.append(_upstream(config, api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"),
                                  timeout))
        findings.extend(_deployments(config, gateway, reached.status == "ok", timeout))
        findings.append(_budgets(config))
        findings.extend(_prices(config, gateway, reached.status == "ok", timeout))
        findings.append(_metrics(config))
    finally:
        if gateway is not None:
            gateway.close()
        quiet.setLevel(level)
    return findings


def _config(path: Path | None, overrides: dict[str, Any], findings: list[Finding]) -> GatewayConfig | None:
    where = str(path) if path is not None else "no file (defaults and FLEETGATE_* variables)"
    try:
        config = GatewayConfig.from_toml(path, **overrides) if path is not None else GatewayConfig(**overrides)
    except ConfigError as e:  # the loader's problems, one finding each
        findings.extend(Finding("FAIL", "config", str(problem)) for problem in e.problems)
        if not e.problems:
            findings.append(Finding("FAIL", "config", str(e)))
        return None
    findings.append(Finding("ok", "config", f"{where} ({config.env or 'no FLEETGATE_ENV'})"))
    return config


def _gateway(config: GatewayConfig, findings: list[Finding]) -> Any:
    """A gateway made as a pod makes it: settings that only fail when combined fail here."""
    from fleetgate.gateway import Gateway

    try:
        return Gateway(config)
    except Exception as e:  # whatever stops a pod from starting is this check's finding
        findings.append(Finding("FAIL", "config", f"a gateway cannot be made from it: {type(e).__name__}: {e}"
                                if not isinstance(e, (FleetgateError, ValueError)) else str(e)))
        return None


def _secrets(path: Path) -> list[Finding]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []  # reported by the config check
    found = []
    for number, line in enumerate(lines, 1):  # comments too: a key in a comment is in the repository
        for pattern, what in _SECRETS:
            if pattern.search(line):
                found.append(Finding("FAIL", "secrets", f"{path} line {number} holds {what}"))
                break
    return found or [Finding("ok", "secrets", f"none written in {path}")]


def _redis(config: GatewayConfig, gateway: Any) -> Finding:
    if config.redis_url is None:
        if config.env == "production":
            return Finding("FAIL", "redis", "no redis_url in production: every pod would spend the whole quota and "
                                            "budget on its own; set redis_url (or FLEETGATE_REDIS_URL)")
        return Finding("ok", "redis", "none: embedded, one process")
    shown = redacted_url(config.redis_url)
    if gateway is None:
        return Finding("FAIL", "redis", f"{shown} not checked: the config does not make a gateway")
    try:
        gateway.limiter.ping()
    except FleetgateError as e:
        return Finding("FAIL", "redis", f"cannot reach {shown} ({e}): is Redis up, and is redis_url "
                                        f"(or FLEETGATE_REDIS_URL, --redis) right?")
    return Finding("ok", "redis", f"{shown} answers")


def _upstream(config: GatewayConfig, api_key: str | None, timeout: float) -> Finding:
    base = (config.base_url or os.environ.get("OPENAI_BASE_URL") or _DEFAULT_BASE_URL).rstrip("/")
    if not api_key:
        return Finding("FAIL", "upstream", "no API key: set OPENAI_API_KEY")
    return _probe("upstream", f"{base}/models", {"Authorization": f"Bearer {api_key}"}, timeout,
                  "base_url (or OPENAI_BASE_URL)", "OPENAI_API_KEY")


def _probe(area: str, url: str, headers: dict[str, str], timeout: float, where: str, key: str) -> Finding:
    """GET `url` (a list of models: no tokens spent): whether it answers, and what to
    check when it does not (`where` the URL comes from, `key` where its key does)."""
    try:
        response = httpx2.get(url, headers=headers, timeout=timeout)
    except (httpx2.HTTPError, httpx2.InvalidURL) as e:
        return Finding("FAIL", area, f"cannot reach {url} ({type(e).__name__}: {e}): check {where}, the network "
                                     f"and any proxy")
    if response.status_code in (401, 403):
        return Finding("FAIL", area, f"{url} refused the API key ({response.status_code}): check {key}")
    if response.status_code != 200:
        hint = " (a base_url without /v1?)" if response.status_code == 404 else ""
        return Finding("FAIL", area, f"{url} answered {response.status_code}{hint}: {response.text[:200]}")
    return Finding("ok", area, f"{url} answers")


def _deployments(config: GatewayConfig, gateway: Any, redis_answers: bool, timeout: float) -> list[Finding]:
    """Each deployment (``[deployments]``): reached with its own key, and the room its
    quota has now (with Redis: the fleet's)."""
    if gateway is None or not config.deployments:
        return []
    from fleetgate._core import Limiter

    # With Redis, a limiter of its own without leases (a lease's decision does not report
    # the room); Redis not answering: no room to show.
    rooms = gateway.limiter if config.redis_url is None else Limiter(config.redis_url) if redis_answers else None
    found = []
    for model in config.deployments:
        for d in gateway.deployments.of(model):
            s = d.settings
            key = (f"${s.api_key_env}" if s.api_key_env else str(s.api_key_file) if s.api_key_file
                   else "the caller's key")
            area = f"deployment {d.key}"
            if d.api_key is None:
                probe = Finding("ok", area, f"{s.base_url} (the caller's key: not probed)")
            else:
                models = ("/openai/models?api-version=" + (s.api_version or "") if s.azure_deployment is not None
                          else "/models")
                probe = _probe(area, s.base_url.rstrip("/") + models, d.auth(), timeout, f"its base_url ({s.base_url})",
                               key)
            found.append(Finding(probe.status, area, f"{probe.message}; key {key}, priority {s.priority}, weight "
                                                     f"{s.weight:g}{_room(rooms, d.quota)}"
                                                     f"{_spent(gateway, d.name, rooms is not None)}"))
    return found


def _spent(gateway: Any, name: str, answers: bool) -> str:
    """What the budgets of the deployments named `name` have spent in their period, as
    this check's text ("": none; the store not answering: their limits alone)."""
    shown = []
    for budget in gateway.budgets.of_deployment(name):
        status = gateway.budgets.ledger.status(budget) if answers else None
        spent = f", ${status.spent:,.2f} spent" if status is not None else ""
        shown.append(f"budget ${budget.limit:,.2f}/{budget.period}{spent}")
    return "".join(f", {s}" for s in shown)


def _room(limiter: Any, quota: Any) -> str:
    """The room a deployment's quota has now, as this check's text (with Redis: the
    fleet's view; embedded: this process's, which is the whole bucket; no `limiter`:
    Redis does not answer)."""
    if quota is None:
        return ", no limits"
    if limiter is None:
        return ""
    decision = limiter.try_acquire(quota, requests=0, tokens=0)
    parts = [f"{room:,} of {size:,} {what}" for room, size, what in (
        (decision.remaining_requests, quota.request_capacity, "requests"),
        (decision.remaining_tokens, quota.token_capacity, "tokens")) if room is not None and size]
    return f", room now {' and '.join(parts)}" if parts else ""


def _budgets(config: GatewayConfig) -> Finding:
    limits = config.budgets.limits
    if not limits:
        return Finding("FAIL", "budgets", "none configured: nothing stops a runaway loop from spending; add "
                                          "[[budgets.limits]] (e.g. scope = \"global\", dollars = 100)")
    shown = ", ".join(f"{b.scope}{':' + b.name if b.name else ''} ${b.dollars:g}/{b.period}" for b in limits)
    return Finding("ok", "budgets", shown)


def _prices(config: GatewayConfig, gateway: Any, redis_answers: bool, timeout: float) -> list[Finding]:
    """The models the config names, and those the fleet gated in the last 7 days (read from
    Redis), that have no price: WARN when a budget refuses their calls."""
    from fleetgate.config.named_models import model_places
    from fleetgate.seen_models import RECENT_SECONDS, recent

    if gateway is None:
        return []  # the config does not make a gateway, nor so its price table: said above
    table = gateway.prices
    refused = config.budgets.unpriced == "refuse" and bool(config.budgets.limits)
    status: Literal["ok", "WARN"] = "WARN" if refused else "ok"
    what = ('a budget refuses their calls ([budgets] unpriced = "refuse")' if refused else
            "no budget counts their calls" + (' ([budgets] unpriced = "allow")' if config.budgets.limits else ""))
    todo = "; price it under [prices.models.\"{}\"] (`fleetgate prices` shows the table), or check the name"
    found = []
    configured = {m: where for m, where in model_places(config).items() if table.price(m) is None}
    for model, where in sorted(configured.items()):
        found.append(Finding(status, "prices", f"{model!r}, named in {', '.join(where)}, has no price: {what}"
                                               + todo.format(model)))
    fleet = ""
    if config.redis_url is not None and redis_answers:
        try:
            seen = recent(config.redis_url, timeout=timeout)
        except Exception as e:  # redis-py's errors: the check's finding
            return [*found, Finding("FAIL", "prices", f"cannot read the models the fleet gated from "
                                                      f"{redacted_url(config.redis_url)} ({type(e).__name__}: {e})")]
        for model, at in seen.items():
            if model not in configured and table.price(model) is None:
                when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
                found.append(Finding(status, "prices", f"{model!r}, gated by the fleet (last noted {when}), has no "
                                                       f"price: {what}" + todo.format(model)))
        fleet = f" and every one the fleet gated in the last {RECENT_SECONDS // 86400} days"
    if found:
        return found
    read = f", read {table.read.isoformat()}" if table.read else ""
    return [Finding("ok", "prices", f"every configured model{fleet} has a price ({len(table.models)} models from "
                                    f"{table.source}{read})")]


def _metrics(config: GatewayConfig) -> Finding:
    if not config.metrics.enabled:
        return Finding("FAIL", "metrics", "disabled ([metrics] enabled = false): no alert could fire; enable them")
    from fleetgate.metrics import registry_for

    if not any(family.name == "fleetgate_requests" for family in registry_for().collect()):
        return Finding("FAIL", "metrics", "enabled, but no fleetgate_* family is registered for scraping: with "
                                          "PROMETHEUS_MULTIPROC_DIR set, check that the directory exists and is "
                                          "writable")
    return Finding("ok", "metrics", "enabled; serve them with gate.metrics_app() or `fleetgate metrics serve`")


def render(findings: list[Finding], echo: Callable[[str], None]) -> bool:
    """Print each finding; True when all passed (none is FAIL or WARN)."""
    for finding in findings:
        echo(str(finding))
    return all(f.status == "ok" for f in findings)

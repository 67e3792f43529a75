"""Model routing: rollouts (a canary configuration taking a growing share of traffic,
gated) and complexity tiers (simple requests to cheaper models). The router rewrites a
request before the cache and deduplication see it, so that answers of one configuration
are never served for another.

    [routing]
    tiers = [{ name = "nano", model = "gpt-4.1-nano" }, { name = "mini", model = "gpt-4.1-mini" },
             { name = "full", model = "gpt-4.1" }]       # cheapest first
    route_models = ["gpt-4.1"]                            # requests for these are routed

    [routing.rollouts.support-v2]
    feature = "support"
    baseline = { version = "v1" }
    canary = { model = "gpt-4.1-mini", instructions = "Answer in two sentences.", version = "v2" }

Answers carry ``x-fleetgate-route`` (the tier) and ``x-fleetgate-deployment``
(``rollout/side/version``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx2

from fleetgate.config import DeploymentSettings, RoutingSettings
from fleetgate.errors import CircuitOpen, FleetgateError
from fleetgate.prices import PriceTable
from fleetgate.router.rollout import Figures, Outcome, Rollouts, RolloutState, Side, decide
from fleetgate.router.tiers import Classifier, HeuristicClassifier, NearestClassifier, prompt_of
from fleetgate.scope import Scope
from fleetgate.sharing import is_read

if TYPE_CHECKING:
    from fleetgate.cache.embedders import Embedder

__all__ = ["Classifier", "Figures", "HeuristicClassifier", "NearestClassifier", "Outcome", "Route", "Router",
           "RolloutState", "Rollouts", "decide"]

ROUTE_HEADER = "x-fleetgate-route"
DEPLOYMENT_HEADER = "x-fleetgate-deployment"


@dataclass
class Route:
    """What the router did to one request."""

    asked: str  # the model the caller asked for
    model: str  # the model it is sent to
    tier: str | None = None
    rollout: tuple[str, Side, int, str] | None = None  # (name, side, step, version)

    def marks(self) -> dict[str, str]:
        """The headers its answer carries: the tier, the rollout's ``name/side/version``."""
        found = {}
        if self.tier is not None:
            found[ROUTE_HEADER] = self.tier
        if self.rollout is not None:
            name, side, _, version = self.rollout
            found[DEPLOYMENT_HEADER] = f"{name}/{side}/{version}"
        return found


#: The layers whose refusals are evidence against the configuration they refused.
_EVIDENCE = frozenset({"breaker", "limit", "lanes", "budget"})


class Router:
    def __init__(self, settings: RoutingSettings, redis_url: str | None, prices: PriceTable,
                 embedder: Embedder | None = None, classifier: Classifier | None = None) -> None:
        self.settings = settings
        self.prices = prices
        self.rollouts = Rollouts(settings.rollouts, redis_url)
        names = [t.name for t in settings.tiers]
        self._models = {t.name: t.model for t in settings.tiers}
        self._route_models = set(settings.route_models or ([settings.tiers[-1].model] if settings.tiers else []))
        self.classifier: Classifier | None = classifier
        if self.classifier is None and settings.tiers:
            if settings.classifier == "nearest":
                if embedder is None or settings.examples is None:
                    raise ValueError('the "nearest" classifier needs an embedder and [routing] examples = FILE')
                self.classifier = NearestClassifier.from_file(embedder, settings.examples)
            else:
                self.classifier = HeuristicClassifier(names)

    @property
    def active(self) -> bool:
        return bool(self.settings.rollouts) or self.classifier is not None

    def route(self, endpoint: str, body: dict[str, Any], sc: Scope) -> tuple[dict[str, Any], Route] | None:
        """The body to send instead, and what was decided; None when nothing applies."""
        model = str(body.get("model", ""))
        picked = self.rollouts.pick(sc.feature, model, sc.user, body)
        if picked is not None:
            name, side, step, deployment = picked
            shaped = _deploy(endpoint, body, deployment)
            return shaped, Route(model, str(shaped.get("model", model)), None, (name, side, step, deployment.version))
        if self.classifier is None or model not in self._route_models:
            return None
        tier = self.classifier.classify(*prompt_of(body))
        target = self._models.get(tier)
        if target is None:
            raise ValueError(f"the classifier named tier {tier!r}, which [routing] tiers do not have")
        return ({**body, "model": target} if target != model else body), Route(model, target, tier)

    def answered(self, route: Route, response: httpx2.Response, seconds: float, stats: Any,
                 usage: dict[str, Any] | None, cost: float | None, refused: FleetgateError | None = None,
                 refused_by: str | None = None) -> None:
        """Count an answer for the gates and the spend report. `seconds`: its latency less
        its waits; `usage` and `cost`: what it was billed (None when it was not);
        `refused` / `refused_by`: why, and by which layer, the configuration's own path
        could not serve it (None when it did).

        A refusal by a layer that judges this configuration's own traffic (its breaker,
        its quota, its lane, its budget) is evidence against it: an error, and an open
        breaker rolls a canary back at once. A refusal for the whole fleet (a degraded
        mode, a setting) and upstream's 429s say nothing of the configuration."""
        if route.tier is not None:
            stats.count(f"routed_{route.tier}")
        if route.rollout is not None and refused_by in _EVIDENCE:
            name, side, step, _ = route.rollout
            circuit = isinstance(refused, CircuitOpen) and refused.reason != "paused"
            self.rollouts.record(name, side, step, Outcome(True, None, None, circuit_open=circuit))
            return
        if refused is not None or response.status_code == 429:
            return
        if route.tier is not None and usage:
            top = self.prices.cost(self.settings.tiers[-1].model, usage)
            if cost is not None and top is not None:
                stats.count("routing_spent_micros", round(cost * 1e6))
                stats.count("routing_top_tier_micros", round(top * 1e6))
        if route.rollout is not None:
            name, side, step, _ = route.rollout
            self.rollouts.record(name, side, step, _outcome(response, _json(response), seconds, cost,
                                                            self.settings.rollouts[name].too_short_chars))

    def schema_failed(self, headers: Any) -> None:
        """An answer (its response headers) did not validate: a quality signal against
        the configuration that gave it."""
        deployment = headers.get(DEPLOYMENT_HEADER)
        if deployment and deployment.count("/") >= 2:
            name, side, _ = deployment.split("/", 2)
            self.rollouts.note(name, side, "schema_failed")

    def close(self) -> None:
        self.rollouts.close()


def _deploy(endpoint: str, body: dict[str, Any], d: DeploymentSettings) -> dict[str, Any]:
    """`body` sent as configuration `d` says."""
    body = dict(body)
    if d.model is not None:
        body["model"] = d.model
    if d.temperature is not None:
        body["temperature"] = d.temperature
    if endpoint.endswith("/responses"):
        if d.instructions is not None:
            body["instructions"] = d.instructions
        if d.max_output_tokens is not None:
            body["max_output_tokens"] = d.max_output_tokens
        return body
    if d.instructions is not None:
        rest = [m for m in body.get("messages", []) if not (isinstance(m, dict) and m.get("role") in ("system",
                                                                                                    "developer"))]
        body["messages"] = [{"role": "system", "content": d.instructions}, *rest]
    if d.max_output_tokens is not None:
        body.pop("max_tokens", None)
        body["max_completion_tokens"] = d.max_output_tokens
    return body


def _json(response: httpx2.Response) -> Any:
    if not is_read(response) or "json" not in response.headers.get("content-type", ""):
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def _outcome(response: httpx2.Response, body: Any, seconds: float, cost: float | None, too_short: int) -> Outcome:
    error = response.status_code >= 400  # 429s are not counted at all (see answered)
    refusal = truncated = short = False
    choices = body.get("choices") if isinstance(body, dict) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        message = choices[0].get("message") or {}
        refusal = bool(message.get("refusal"))
        truncated = choices[0].get("finish_reason") == "length"
        short = len(message.get("content") or "") < too_short and not refusal
    elif isinstance(body, dict) and body.get("object") == "response":
        truncated = (body.get("incomplete_details") or {}).get("reason") == "max_output_tokens"
        text = "".join(part.get("text", "") for item in body.get("output", []) if isinstance(item, dict)
                       for part in item.get("content", []) or [] if isinstance(part, dict))
        refusal = any(isinstance(part, dict) and part.get("type") == "refusal" for item in body.get("output", [])
                      if isinstance(item, dict) for part in item.get("content", []) or [])
        short = len(text) < too_short and not refusal
    return Outcome(error, seconds, cost, refusal, truncated, short and not error)

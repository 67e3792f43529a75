"""Where a configuration names a model: each model it names, with the places naming it
(``[routing] tiers "mini"``, ``[fallback] models "gpt-4.1" →``, ...), for the warm-up
to load their encodings and ``fleetgate check`` to name those with no price."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetgate.config.gateway import GatewayConfig

__all__ = ["model_places"]


def model_places(config: GatewayConfig) -> dict[str, list[str]]:
    """Every model `config` names, with where: the override, quotas and lanes keyed by
    model, deployments, fallback rungs, presets, routing tiers and routed models, rollouts and their
    deployments, batch queue limits, and an ``openai:`` embedder."""
    places: dict[str, list[str]] = {}

    def named(model: str | None, where: str) -> None:
        if model:
            places.setdefault(model, []).append(where)

    named(config.model_override, "model_override")
    for model in config.models:
        named(model, f'[models."{model}"]')
    for model in config.deployments:
        named(model, f'[deployments."{model}"]')
    for model in config.lanes.models:
        named(model, "[lanes] models")
    for model, cheaper in config.fallback.models.items():
        named(model, "[fallback] models")
        named(cheaper, f'[fallback] models "{model}" →')
    for name, preset in config.presets.items():
        named(preset.model, f'[presets."{name}"]')
    for tier in config.routing.tiers:
        named(tier.model, f'[routing] tiers "{tier.name}"')
    for model in config.routing.route_models:
        named(model, "[routing] route_models")
    for name, rollout in config.routing.rollouts.items():
        named(rollout.model, f'[routing.rollouts."{name}"]')
        named(rollout.baseline.model, f'[routing.rollouts."{name}".baseline]')
        named(rollout.canary.model, f'[routing.rollouts."{name}".canary]')
    for model in config.batch.enqueued_tokens:
        named(model, "[batch] enqueued_tokens")
    if config.cache.semantic.embedder.startswith("openai:"):
        named(config.cache.semantic.embedder.removeprefix("openai:"), "[cache.semantic] embedder")
    return places

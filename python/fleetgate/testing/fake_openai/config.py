"""What the fake OpenAI server is told: per-model limits, injected faults, batch timings,
and what deployment it stands for (its API key, and the Azure OpenAI URL shape).

Everything is data (pydantic models), loadable from a TOML or JSON file for the
``fleetgate fake-openai --config`` command.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["AzureShape", "BackgroundTimings", "BatchTimings", "FakeConfig", "Fault", "Latency", "ModelLimits", "TierBehaviour",
           "load_config"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelLimits(_Strict):
    """A model's limits, enforced as OpenAI does: per minute, in one-second slices."""

    requests_per_minute: int = Field(default=10_000, gt=0)
    tokens_per_minute: int = Field(default=2_000_000, gt=0)
    #: Tokens that may wait in unfinished batches of this model at once.
    batch_enqueued_tokens: int = Field(default=20_000_000, gt=0)


class Latency(_Strict):
    """A latency distribution, in milliseconds."""

    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    ms: float = Field(default=0.0, ge=0)
    #: uniform: upper bound; lognormal: sigma of the underlying normal.
    spread: float = Field(default=0.0, ge=0)


class Fault(_Strict):
    """A fault injected into matching requests while it is active.

    ``start`` and ``end`` are seconds since the server started; ``probability`` is per
    request, drawn from the server's seeded generator.
    """

    kind: Literal["error", "latency", "timeout", "reset", "cut_stream", "malformed_json", "markdown_fence", "insufficient_quota",
                  "trailing_prose", "wrong_schema"]
    model: str = "*"
    start: float = Field(default=0.0, ge=0)
    end: float = Field(default=float("inf"), gt=0)
    probability: float = Field(default=1.0, ge=0, le=1)
    #: error: the HTTP status to answer with.
    status: int = Field(default=500, ge=400, le=599)
    #: latency: the extra delay; timeout: how long to hold the request before closing it.
    latency: Latency = Latency()

    @model_validator(mode="after")
    def _window(self) -> Fault:
        if self.end <= self.start:
            raise ValueError(f"fault {self.kind!r}: end ({self.end}) must be after start ({self.start})")
        return self


class BatchTimings(_Strict):
    """How fast batches move, so that a test runs in seconds."""

    validating_seconds: float = Field(default=0.2, ge=0)
    #: Requests processed per second while in progress.
    requests_per_second: float = Field(default=500.0, gt=0)
    finalizing_seconds: float = Field(default=0.2, ge=0)
    cancelling_seconds: float = Field(default=0.2, ge=0)
    #: What "24h" lasts here; a batch still unfinished then expires.
    completion_window_seconds: float = Field(default=60.0, gt=0)
    #: Fraction of lines that fail with a per-line 500 (seeded).
    line_failure_rate: float = Field(default=0.0, ge=0, le=1)
    #: Fraction of lines that fail with a per-line 400 (a request the API refuses; seeded).
    line_rejection_rate: float = Field(default=0.0, ge=0, le=1)
    #: Output lines written twice, and lines for ids the batch was not sent, per batch
    #: (the anomalies a collector must report rather than trust).
    duplicate_lines: int = Field(default=0, ge=0)
    unknown_lines: int = Field(default=0, ge=0)


class TierBehaviour(_Strict):
    """How the fake's tiers behave under load (probabilities per request, seeded)."""

    #: A ``priority`` (or ``fast``) request served, and billed, at ``default`` instead.
    priority_downgrade: float = Field(default=0.0, ge=0, le=1)
    #: A ``flex`` request refused with 429 ``resource_unavailable``.
    flex_unavailable: float = Field(default=0.0, ge=0, le=1)


class BackgroundTimings(_Strict):
    """How background responses (``background: true``) move, and where their webhooks go."""

    #: From creation to ``in_progress``, and to the end (``completed``).
    queued_seconds: float = Field(default=0.0, ge=0)
    complete_seconds: float = Field(default=0.3, ge=0)
    #: How long a response is kept once it ended (OpenAI: about 10 minutes); after that
    #: ``GET /v1/responses/{id}`` answers 404.
    keep_seconds: float = Field(default=600.0, gt=0)
    #: Where ``response.*`` webhooks are POSTed (None: none), signed with ``webhook_secret``
    #: (``whsec_`` and base64, as OpenAI shows it) the Standard Webhooks way.
    webhook_url: str | None = None
    webhook_secret: str | None = None


class AzureShape(_Strict):
    """Azure OpenAI's classic URL shape (``/openai/deployments/{deployment}/…?api-version=…``),
    served besides ``/v1/…`` (:mod:`fleetgate.testing.fake_openai.azure`)."""

    #: Azure deployment name -> the model it serves (limits, counters and usage are that model's).
    deployments: dict[str, str] = Field(default_factory=dict)
    #: The ``api-version`` values accepted; any other is a 400.
    api_versions: list[str] = Field(default_factory=lambda: ["2024-10-21", "2025-04-01-preview"], min_length=1)


class FakeConfig(_Strict):
    seed: int = 0
    #: Limits per model; models not listed use ``default_limits``.
    models: dict[str, ModelLimits] = Field(default_factory=dict)
    default_limits: ModelLimits = ModelLimits()
    faults: list[Fault] = Field(default_factory=list)
    batch: BatchTimings = BatchTimings()
    background: BackgroundTimings = BackgroundTimings()
    #: Words in a generated answer when the request sets no maximum.
    answer_words: int = Field(default=24, gt=0)
    embedding_dimensions: int = Field(default=256, gt=0, le=3072)
    #: The price file the server bills with (None: the table fleetgate ships).
    prices_file: Path | None = None
    #: Priority downgrades and Flex capacity refusals (:mod:`fleetgate.testing.fake_openai.tiers`).
    tiers: TierBehaviour = TierBehaviour()
    #: The one API key this server (one deployment) accepts, as ``Authorization: Bearer <key>``
    #: or ``api-key: <key>`` (None: any key, or none). Others are answered 401
    #: (:mod:`fleetgate.testing.fake_openai.keys`).
    api_key: str | None = Field(default=None, min_length=1)
    #: Also serve Azure OpenAI's URL shape, for these deployments (None: ``/v1/…`` only).
    azure: AzureShape | None = None

    def limits_for(self, model: str) -> ModelLimits:
        return self.models.get(model, self.default_limits)


def load_config(path: str | Path) -> FakeConfig:
    """Read a TOML or JSON file into a :class:`FakeConfig` (unknown keys are errors)."""
    p = Path(path)
    text = p.read_text()
    data = json.loads(text) if p.suffix == ".json" else tomllib.loads(text)
    return FakeConfig.model_validate(data)

"""OpenTelemetry spans of gated requests, following the GenAI semantic conventions, when
``opentelemetry-api`` is installed (``pip install 'fleetgate[otel]'``) and
``[tracing] enabled`` (the default). Spans go to whatever tracer provider the application
configured; without one, OpenTelemetry's API does nothing.

One CLIENT span per gated request, named ``{gen_ai.operation.name} {gen_ai.request.model}``
(``chat gpt-4.1-mini``), a child of the caller's current span, from entering the gateway
to the answer (a stream: its headers). Attributes: ``gen_ai.operation.name``,
``gen_ai.provider.name`` (``openai``), ``gen_ai.request.model`` / ``max_tokens`` /
``temperature`` / ``top_p``, ``gen_ai.response.id`` / ``model`` / ``finish_reasons``,
``gen_ai.usage.input_tokens`` / ``output_tokens``, ``openai.request.service_tier`` (the
tier asked) / ``openai.response.service_tier`` (the tier that served an answer read
whole), ``server.address`` / ``server.port``,
``error.type`` when it failed; and fleetgate's own: ``fleetgate.tier``,
``fleetgate.cache``, ``fleetgate.dedup``, ``fleetgate.route``, ``fleetgate.deployment``,
``fleetgate.feature`` (its pseudonym when ``[privacy] sensitive`` names features),
``fleetgate.refused``. Prompts, answers and users are never recorded.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

from fleetgate.errors import ConfigError
from fleetgate.estimate import usage_counts
from fleetgate.sharing import is_read

__all__ = ["Tracer", "tracer"]

_OPERATIONS = {"/chat/completions": "chat", "/responses": "chat", "/embeddings": "embeddings"}
_MARKS = (("x-fleetgate-tier", "fleetgate.tier"), ("x-fleetgate-cache", "fleetgate.cache"),
          ("x-fleetgate-dedup", "fleetgate.dedup"), ("x-fleetgate-route", "fleetgate.route"),
          ("x-fleetgate-deployment", "fleetgate.deployment"))


class Tracer:
    """Starts and ends the spans of gated requests."""

    def __init__(self, otel_trace: Any, provider: Any = None) -> None:
        self._trace = otel_trace
        self._tracer = (provider or otel_trace).get_tracer("fleetgate")
        #: The API's proxy for the global provider (None: another tracer). It records nothing
        #: until the application sets a provider, which it may do after the gateway is made.
        self._proxy = self._tracer if _delegates(otel_trace, self._tracer) else None
        #: Whether its spans may record (known not to: the API's no-op tracer, and the proxy
        #: while it has no provider to use); a sampler may still drop them.
        self._live = self._proxy is None and not isinstance(self._tracer, otel_trace.NoOpTracer)

    def _records(self) -> bool:
        """Whether a span started now may record. Without an SDK nothing keeps a span, so
        none is made: its attributes would be built for nothing."""
        if not self._live and self._proxy is not None and not isinstance(self._proxy._tracer, self._trace.NoOpTracer):
            self._live = True  # the global provider is set once, for good
        return self._live

    def start(self, endpoint: str, body: dict[str, Any], request: httpx2.Request, feature: str | None) -> Any:
        """The span of a gated request, started; None when nothing would record it."""
        if not self._records():
            return None
        model = str(body.get("model", ""))
        operation = _OPERATIONS.get(endpoint, "chat")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model,
            "server.address": request.url.host,
        }
        if request.url.port is not None:
            attributes["server.port"] = request.url.port
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens", body.get("max_output_tokens")))
        for name, value in (("gen_ai.request.max_tokens", max_tokens), ("gen_ai.request.temperature",
                                                                         body.get("temperature")),
                            ("gen_ai.request.top_p", body.get("top_p"))):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                attributes[name] = value
        if isinstance(body.get("service_tier"), str):
            attributes["openai.request.service_tier"] = body["service_tier"]
        if feature is not None:
            attributes["fleetgate.feature"] = feature
        return self._tracer.start_span(f"{operation} {model}", kind=self._trace.SpanKind.CLIENT,
                                       attributes=attributes)

    def answered(self, span: Any, response: httpx2.Response) -> None:
        """End `span` with what the answer says about itself (nothing is read for a span that
        records nothing: OpenTelemetry's API without an SDK)."""
        if not span.is_recording():
            span.end()
            return
        headers = response.headers
        for header, attribute in _MARKS:
            value = headers.get(header)
            if value is not None:
                span.set_attribute(attribute, value)
        if headers.get("x-fleetgate") == "refused":
            span.set_attribute("fleetgate.refused", True)
        if response.status_code >= 400:
            span.set_attribute("error.type", str(response.status_code))
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        elif is_read(response):
            _response_attributes(span, response)
        span.end()

    def failed(self, span: Any, error: BaseException) -> None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        span.end()


def _delegates(otel_trace: Any, tracer: Any) -> bool:
    """Whether `tracer` is the API's proxy for the global provider and tells which tracer it
    would use now: its ``_tracer`` (private, but OpenTelemetry's own and long unchanged). A
    proxy that does not tell is taken as any other tracer: one that may record."""
    return isinstance(tracer, otel_trace.ProxyTracer) and isinstance(getattr(type(tracer), "_tracer", None), property)


def _response_attributes(span: Any, response: httpx2.Response) -> None:
    if "json" not in response.headers.get("content-type", ""):
        return
    try:
        answer = json.loads(response.content)
    except ValueError:
        return
    if not isinstance(answer, dict):
        return
    for key, attribute in (("id", "gen_ai.response.id"), ("model", "gen_ai.response.model"),
                           ("service_tier", "openai.response.service_tier")):
        if isinstance(answer.get(key), str):
            span.set_attribute(attribute, answer[key])
    reasons = [c.get("finish_reason") for c in answer.get("choices") or () if isinstance(c, dict)]
    if answer.get("status") in ("completed", "incomplete"):  # the Responses API
        reasons.append(answer["status"])
    if any(isinstance(r, str) for r in reasons):
        span.set_attribute("gen_ai.response.finish_reasons", [r for r in reasons if isinstance(r, str)])
    usage = answer.get("usage")
    if isinstance(usage, dict):
        counts = usage_counts(usage)
        span.set_attribute("gen_ai.usage.input_tokens", counts.prompt)
        span.set_attribute("gen_ai.usage.output_tokens", counts.output)


def tracer(enabled: bool, provider: Any = None) -> Tracer | None:
    """A tracer (from `provider`, by default the global tracer provider) when `enabled`
    and OpenTelemetry's API is installed, else None."""
    if not enabled:
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        if provider is not None:
            raise ConfigError("a tracer_provider was given but opentelemetry-api is not installed: "
                              "pip install 'fleetgate[otel]'") from None
        return None
    return Tracer(trace, provider)

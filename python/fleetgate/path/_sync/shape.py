# Generated from fleetgate/path/_async/shape.py by scripts/unasync.py: edit that file, then run the script.
"""shape: what is sent, before anything else decides about it. The instructions of the
features opted in are compressed (the saving counted per template), the call's preset
(its scope's, else its feature's) sets its model, its output limit and cuts its input to
size, and the prompt-cache layout report samples it. The estimate the later layers use is
made once, for the body as shaped, and last the context OpenAI holds for a Responses call
that continues a chain is added to it (:mod:`.context`): budgets and quotas reserve what
OpenAI will count. A call the router or the fallback ladder sends with another body keeps
that context in its estimate.

Contract: a preset that is not configured refuses the call (400, ``ConfigError``); a body
compression cannot save on goes as it was; the context step's refusals are its own (see
:mod:`.context`).
"""

from __future__ import annotations

import httpx2

from fleetgate.budget.presets import Presets
from fleetgate.config import PromptSettings
from fleetgate.errors import ConfigError
from fleetgate.metrics import GatewayMetrics
from fleetgate.path._sync.context import Context
from fleetgate.path._sync.layer import Layer, Next
from fleetgate.path.call import Call
from fleetgate.path.refusals import refuse
from fleetgate.privacy import Privacy
from fleetgate.prompts import Compressor, LayoutTracker, Savings, compress_body
from fleetgate.records import template_hash

__all__ = ["Shape"]


class Shape(Layer):
    name = "shape"

    def __init__(self, presets: Presets, prompts: PromptSettings, compressor: Compressor | None, savings: Savings,
                 layout: LayoutTracker | None, metrics: GatewayMetrics | None, privacy: Privacy,
                 context: Context | None) -> None:
        self.presets, self.compressor, self.savings, self.layout, self.metrics = (presets, compressor, savings,
                                                                                  layout, metrics)
        self.privacy = privacy  # reports name a template by its feature: a sensitive one by pseudonym
        self.compressed = frozenset(prompts.compress_features) if compressor is not None else frozenset()
        self.shapes = bool(presets.presets) or compressor is not None or layout is not None
        self.context = context

    def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        if self.shapes:
            refused = self._shape(call)
            if refused is not None:
                return refused
        if self.context is not None and call.endpoint == "/responses":  # only Responses chains hold context
            return self.context.handle(call, next)
        return next(call)

    def _shape(self, call: Call) -> httpx2.Response | None:
        """Compress, cut to the preset and sample the call; the refusal to answer, if any."""
        if call.scope.feature in self.compressed:
            self._compress(call)
        name = self.presets.for_scope(call.scope)
        if name is not None:
            try:
                shaped = self.presets.shape(name, call.endpoint, call.body)
            except KeyError:
                return refuse(call, ConfigError(
                    f"preset {name!r} is not configured: add [presets.{name}] to the gateway's config "
                    f"(known: {', '.join(sorted(self.presets.presets)) or 'none'})"))
            if not call.rewrite(shaped.body):
                return refuse(call, ConfigError(f"preset {name!r} made a request the gateway cannot read: check the "
                                                f"model of [presets.{name}]"))
            call.cut = shaped.cut
        if self.layout is not None:
            call.template = self.privacy.label("feature", call.scope.feature) or template_hash(call.body)
            self.layout.observe(call.template, call.endpoint, call.body)
        return None

    def _compress(self, call: Call) -> None:
        assert self.compressor is not None
        done = compress_body(self.compressor, call.endpoint, call.body)
        if done is None:
            return
        body, saved = done
        before = call.estimate.prompt_tokens
        if call.rewrite(body):
            self.savings.add(str(self.privacy.label("feature", call.scope.feature)), before, saved)  # the layout's key
            if self.metrics is not None:
                self.metrics.prompt_saved(call.scope.feature, saved)

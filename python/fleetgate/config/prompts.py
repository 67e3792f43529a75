"""``[prompts]``: the settings of compressing instructions and of the prompt-cache layout report."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PromptSettings"]


class PromptSettings(BaseModel):
    """``[prompts]``: compression of instructions and a prompt-cache layout report
    (:mod:`fleetgate.prompts`); both opt-in."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    #: Features whose system/developer messages and instructions are compressed: filler
    #: phrasing and repeated whitespace removed; numbers, negations, names, code, quotes,
    #: URLs and {placeholders} never touched.
    compress_features: list[str] = Field(default_factory=list)
    #: Filler phrases of your own, with what replaces them ("" removes).
    extra_fillers: dict[str, str] = Field(default_factory=dict)
    #: Sample each template's prompts (by feature, else by the hash of its system
    #: message) for ``gate.prompt_report()``: how well each uses OpenAI's prompt caching.
    layout: bool = False
    layout_samples: int = Field(default=32, ge=2, le=1_000)

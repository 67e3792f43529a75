"""What a request will count against tokens per minute before it is sent.

OpenAI counts a request against TPM at its arrival, from the request's characters (about
four per token) plus the most output it may produce, and that count stands whatever the
answer turns out to be. fleetgate reserves the larger of that character estimate and the
prompt counted with the model's real encoding (``o200k_base`` / ``cl100k_base``), plus the
maximum output; afterwards it settles to what upstream counted: the character estimate
plus the maximum output, or the real usage if that is larger. So the fleet's view never
falls below OpenAI's, and a prompt the tokenizer finds longer than its characters suggest
(non-Latin text) is still covered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from fleetgate._core import chat_prompt_tokens, count_tokens

__all__ = ["Estimate", "GATED_PATHS", "UsageCounts", "content_text", "estimate_request", "usage_counts",
           "usage_tokens"]

#: The endpoints whose calls pass through quotas, by the end of their URL path.
GATED_PATHS = ("/chat/completions", "/responses", "/embeddings")


@dataclass(frozen=True, slots=True)
class Estimate:
    endpoint: str
    model: str
    #: The prompt counted with the model's encoding.
    prompt_tokens: int
    #: The prompt as OpenAI's rate limiter counts it, from characters.
    prompt_chars_estimate: int
    max_output_tokens: int
    stream: bool
    #: The ``service_tier`` the request asks for (None: none, the project's default); the
    #: answer's own ``service_tier`` says which tier served it (:mod:`fleetgate.tiers`).
    service_tier: str | None = None
    #: Input tokens OpenAI holds for the call and adds to its body (the context of a
    #: Responses chain it continues: :mod:`fleetgate.chains`); 0 for most calls.
    held: int = 0

    @property
    def tokens(self) -> int:
        """What to reserve."""
        return max(self.prompt_tokens, self.prompt_chars_estimate) + self.held + self.max_output_tokens

    @property
    def input_tokens(self) -> int:
        """The input the call is billed for: its prompt and the context held for it."""
        return self.prompt_tokens + self.held

    @property
    def upstream_tokens(self) -> int:
        """What OpenAI counts against tokens per minute for this request."""
        return self.prompt_chars_estimate + self.held + self.max_output_tokens

    def settle_with(self, usage: int | None, input_tokens: int | None = None) -> int:
        """What to settle the reservation to, given the real usage (None if unknown) and,
        for a call with held context, the input it reports: the context it really carried
        replaces the one reserved for."""
        if usage is None:
            return self.upstream_tokens
        if self.held and input_tokens is not None:  # the body counted as the lesser of both ways, to be safe
            carried = max(0, input_tokens - min(self.prompt_tokens, self.prompt_chars_estimate))
            return max(usage, self.prompt_chars_estimate + carried + self.max_output_tokens)
        return max(usage, self.upstream_tokens)


def chars_estimate(texts: list[str], per_message: int = 0) -> int:
    """OpenAI's character-based count: about four characters per token."""
    return sum(-(-len(t) // 4) for t in texts if t) + per_message


def _texts(value: Any) -> list[str]:
    """Text of a message's content: a string, or the text of its parts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def content_text(value: Any) -> str:
    """A message's content as one text: the string itself (most messages), else the text
    of its parts, one per line."""
    return value if isinstance(value, str) else "\n".join(_texts(value))


def estimate_request(endpoint: str, body: dict[str, Any], assumed_max_output: int) -> Estimate:
    """Estimate one request. `endpoint` is one of :data:`GATED_PATHS`."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("the request has no model")
    stream = bool(body.get("stream"))
    if endpoint == "/embeddings":
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else [i for i in raw or [] if isinstance(i, str)]
        return Estimate(endpoint, model, sum(count_tokens(model, i) for i in inputs), chars_estimate(inputs), 0, False)
    if endpoint == "/chat/completions":
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        texts = [content_text(m.get("content")) for m in messages]
        prompt = chat_prompt_tokens(model, texts)
        by_chars = chars_estimate(texts, per_message=3 * len(messages))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
    else:
        parts = _texts(body.get("instructions"))
        raw_input = body.get("input")
        if isinstance(raw_input, str):
            parts.append(raw_input)
        elif isinstance(raw_input, list):
            for item in raw_input:
                if isinstance(item, dict):
                    parts.extend(_texts(item.get("content")))
        prompt = count_tokens(model, "\n".join(parts))
        by_chars = chars_estimate(["\n".join(parts)])
        limit = body.get("max_output_tokens")
    max_output = limit if isinstance(limit, int) and limit > 0 else assumed_max_output
    tier = body.get("service_tier")
    return Estimate(endpoint, model, prompt, by_chars, max_output, stream, tier if isinstance(tier, str) else None)


class UsageCounts(NamedTuple):
    """A response's tokens: `prompt` (of which `cached` read from the prompt cache and
    `written` to it), `output` (of which `reasoning`)."""

    prompt: int
    cached: int
    output: int
    reasoning: int
    written: int = 0


def _count(value: Any) -> int:
    return value if isinstance(value, int) else 0


def usage_counts(usage: dict[str, Any]) -> UsageCounts:
    """The tokens of a ``usage`` object of any endpoint (chat's ``prompt_tokens``, the
    Responses API's ``input_tokens``, Realtime's ``input_token_details``, ...); a count it
    lacks is 0."""
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    output = usage.get("completion_tokens", usage.get("output_tokens"))
    details = (usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
               or usage.get("input_token_details"))
    out_details = (usage.get("completion_tokens_details") or usage.get("output_tokens_details")
                   or usage.get("output_token_details"))
    if not isinstance(details, dict):
        details = {}
    return UsageCounts(_count(prompt), _count(details.get("cached_tokens")), _count(output),
                       _count(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else 0,
                       _count(details.get("cache_write_tokens")))


def usage_tokens(usage: Any) -> int | None:
    """Tokens a response's ``usage`` reports (chat, responses or embeddings), or None."""
    if not isinstance(usage, dict):
        return None
    if "total_tokens" in usage and isinstance(usage["total_tokens"], int):
        return int(usage["total_tokens"])
    parts = [usage.get(k) for k in ("prompt_tokens", "completion_tokens", "input_tokens", "output_tokens")]
    numbers = [p for p in parts if isinstance(p, int)]
    return sum(numbers) if numbers else None


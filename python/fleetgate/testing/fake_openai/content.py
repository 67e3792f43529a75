"""Deterministic content: answers, token counts and embeddings that depend only on the
request and the seed, so a test can assert on them."""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import Any

_WORDS = (
    "the quick answer is that fleet quotas hold when every pod reserves before it calls and "
    "settles after it hears back so nothing is lost and nothing is counted twice"
).split()


def estimate_tokens(text: str) -> int:
    """OpenAI's rate-limit estimate: about four characters per token."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _digest(*parts: object) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        h.update(repr(part).encode())
        h.update(b"\x00")
    return h.digest()


def answer(seed: int, model: str, prompt: str, words: int) -> str:
    """A deterministic answer of `words` words."""
    d = _digest(seed, model, prompt)
    start = d[0] % len(_WORDS)
    return " ".join(_WORDS[(start + i * (1 + d[1] % 7)) % len(_WORDS)] for i in range(words)).capitalize() + "."


def schema_instance(seed: int, schema: dict[str, Any], prompt: str) -> Any:
    """A deterministic value that satisfies a JSON schema (objects, arrays, strings,
    numbers, integers, booleans, enums, ``$ref`` into ``$defs``, ``anyOf``)."""
    defs = schema.get("$defs", {})

    def make(node: dict[str, Any], path: str) -> Any:
        if "$ref" in node:
            return make(defs[node["$ref"].rsplit("/", 1)[-1]], path)
        if "enum" in node:
            return node["enum"][_digest(seed, prompt, path)[0] % len(node["enum"])]
        if "const" in node:
            return node["const"]
        if "anyOf" in node:
            return make(next((o for o in node["anyOf"] if o.get("type") != "null"), node["anyOf"][0]), path)
        kind = node.get("type", "object")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "null")
        d = _digest(seed, prompt, path)
        if kind == "object":
            return {k: make(v, f"{path}.{k}") for k, v in node.get("properties", {}).items()}
        if kind == "array":
            return [make(node.get("items", {}), f"{path}[{i}]") for i in range(max(node.get("minItems", 0), 1 + d[0] % 3))]
        if kind == "integer":
            return int(node.get("minimum", 0)) + d[0] % 100
        if kind == "number":
            return float(node.get("minimum", 0)) + d[0] / 8
        if kind == "boolean":
            return bool(d[0] % 2)
        if kind == "null":
            return None
        return " ".join(_WORDS[(d[0] + i) % len(_WORDS)] for i in range(1 + d[1] % 4))

    return make(schema, "$")


def split_for_stream(text: str) -> list[str]:
    """Text as stream deltas, one word (with its leading space) at a time."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


def embedding(seed: int, model: str, text: str, dimensions: int) -> list[float]:
    """A unit vector that depends only on (seed, model, text)."""
    values: list[float] = []
    counter = 0
    while len(values) < dimensions:
        block = _digest(seed, model, text, counter)
        values.extend((b - 127.5) / 127.5 for b in block)
        counter += 1
    vec = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [v / norm for v in vec]


def encode_base64(vector: list[float]) -> str:
    """The API's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def message_text(messages: Any) -> str:
    """All text of chat messages (strings or content parts), for estimates and answers."""
    out: list[str] = []
    for m in messages if isinstance(messages, list) else []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(out)


def responses_input_text(body: dict[str, Any]) -> str:
    """All text of a Responses API request's instructions and input."""
    parts = [body.get("instructions") or ""]
    inp = body.get("input")
    if isinstance(inp, str):
        parts.append(inp)
    elif isinstance(inp, list):
        for item in inp:
            if isinstance(item, dict):
                content = item.get("content")
                if isinstance(content, str):
                    parts.append(content)
                elif isinstance(content, list):
                    parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(p for p in parts if p)


class PrefixCache:
    """Prompt caching as OpenAI reports it: of a prompt of 1,024 tokens or more, the longest
    prefix in 128-token steps that an earlier prompt of the same model began with is served
    from cache (a prompt whose changing part comes first gets nothing), and the steps beyond
    it are written to the cache (:meth:`written`, for models that bill cache writes)."""

    _STEP_CHARS = 128 * 4  # the fake counts about four characters per token

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def cached(self, model: str, prompt: str, prompt_tokens: int) -> int:
        """Tokens of the prompt read from the cache (and the rest of its steps written)."""
        if prompt_tokens < 1024:
            return 0
        best = 0
        for step in range(8, prompt_tokens // 128 + 1):
            key = hash((model, prompt[:step * self._STEP_CHARS]))
            if key in self._seen:
                best = step * 128
            self._seen.add(key)
        return best

    @staticmethod
    def written(prompt_tokens: int, cached: int) -> int:
        """Tokens a prompt of `prompt_tokens` (`cached` of them read) wrote to the cache:
        its whole 128-token steps beyond what it read."""
        return 0 if prompt_tokens < 1024 else prompt_tokens // 128 * 128 - cached
"""Complexity tiers: a request for an expensive model that a cheaper one answers as well
is sent to the cheaper one. A classifier names a tier per request:

- :class:`HeuristicClassifier`: prompt length in tokens, code, multi-step and analysis
  cues, and conversation depth, scored and cut into as many bands as there are tiers;
- :class:`NearestClassifier`: learned from labelled examples, by the majority of the
  nearest ones (the semantic cache's embedder and a FAISS index);
- anything with ``classify(text, messages) -> str`` (a tier's name) of your own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from fleetgate.cache.embedders import Embedder

__all__ = ["Classifier", "HeuristicClassifier", "NearestClassifier", "prompt_of"]

_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|\breturn\b|[{};]\s*$|=>|\bSELECT\b|\bimport\b|#include",
                   re.M | re.I)
_STEPS = re.compile(r"\bstep[- ]by[- ]step\b|\bfirst\b.*\bthen\b|\bplan\b|\bsteps\b|^\s*\d+[.)]\s", re.M | re.I | re.S)
_ANALYSIS = re.compile(r"\b(analy[sz]e|analysis|compare|contrast|evaluate|prove|derive|design|architect\w*|"
                       r"trade-?offs?|optimi[sz]e|debug|refactor|critique|reason|why does|implications?|"
                       r"strategy|in depth|thorough\w*|comprehensive)\b", re.I)


class Classifier(Protocol):
    def classify(self, text: str, messages: int) -> str:
        """The tier's name for a request whose prompt is `text`, in a conversation of
        `messages` messages."""
        ...


class HeuristicClassifier:
    """Scores a prompt from 0 (trivial) up, and cuts the score into the tiers' bands: a
    point per 15 words (at most 4), 1.5 for code, 1.5 for analysis cues, 0.5 for
    multi-step cues, 0.5 for a conversation past 6 messages. With three tiers the cuts
    are 0.8 and 3.0 (chosen on ``tests/data/tier_requests.jsonl``); with another number,
    evenly spread up to 3.0 unless given."""

    def __init__(self, tiers: Sequence[str], cuts: Sequence[float] | None = None) -> None:
        if not tiers:
            raise ValueError("no tiers to classify into")
        self.tiers = list(tiers)
        #: A score below cuts[i] goes to tier i (the last tier takes the rest).
        if cuts is None:
            n = len(tiers) - 1
            cuts = [0.8, 3.0] if n == 2 else [3.0 * (i + 1) / n for i in range(n)]
        self.cuts = list(cuts)
        if len(self.cuts) != len(self.tiers) - 1:
            raise ValueError(f"{len(self.tiers)} tiers need {len(self.tiers) - 1} cuts, not {len(self.cuts)}")

    def score(self, text: str, messages: int) -> float:
        score = min(len(text.split()) / 15, 4.0)
        score += 1.5 if _CODE.search(text) else 0.0
        score += 1.5 if _ANALYSIS.search(text) else 0.0
        score += 0.5 if _STEPS.search(text) else 0.0
        score += 0.5 if messages > 6 else 0.0
        return score

    def classify(self, text: str, messages: int) -> str:
        score = self.score(text, messages)
        for tier, cut in zip(self.tiers, self.cuts):
            if score < cut:
                return tier
        return self.tiers[-1]


class NearestClassifier:
    """The tier most of the `k` most similar labelled examples have (weighted by
    similarity); examples are ``{"text": …, "tier": …}`` lines of a JSONL file."""

    def __init__(self, embedder: Embedder, examples: Sequence[tuple[str, str]], k: int = 7) -> None:
        if not examples:
            raise ValueError("the nearest-neighbour classifier needs labelled examples")
        # numpy and FAISS (the `semantic` extra) load with the first nearest classifier.
        import numpy as np

        from fleetgate.cache.vectors import VectorIndex

        self.embedder, self.k = embedder, k
        self._tiers = [tier for _, tier in examples]
        vectors = embedder.embed([text for text, _ in examples])
        self._index = VectorIndex(vectors.shape[1])
        self._index.add(np.arange(len(examples), dtype=np.int64), vectors)

    @classmethod
    def from_file(cls, embedder: Embedder, path: str | Path, k: int = 7) -> NearestClassifier:
        examples = []
        with Path(path).open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                        examples.append((str(row["text"]), str(row["tier"])))
                    except (ValueError, KeyError) as e:
                        raise ValueError(f'{path}:{number}: not an example ({e}); each line is {{"text", "tier"}}') from e
        return cls(embedder, examples, k)

    def classify(self, text: str, messages: int) -> str:
        votes: dict[str, float] = {}
        for i, similarity in self._index.search(self.embedder.embed([text])[0], self.k):
            votes[self._tiers[i]] = votes.get(self._tiers[i], 0.0) + max(similarity, 0.0)
        return max(votes, key=votes.__getitem__) if votes else self._tiers[0]


def prompt_of(body: dict[str, Any]) -> tuple[str, int]:
    """(the request's text, its number of messages) for a chat completion or a response."""
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = [_text(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") != "system"]
        return "\n".join(parts), len(messages)
    given = body.get("input")
    if isinstance(given, str):
        return given, 1
    if isinstance(given, list):
        return "\n".join(_text(m.get("content")) for m in given if isinstance(m, dict)), len(given)
    return "", 0


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""

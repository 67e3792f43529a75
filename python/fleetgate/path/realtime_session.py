"""What a Realtime session has told the server, for estimating its responses: the model,
instructions and maximum output its ``session.update`` frames set, and the text of the
items its ``conversation.item.create`` frames add. A response reads the session's
instructions (or its own), the whole conversation so far (unless it asks for
``conversation: "none"``) and its own ``input`` items, and may write up to its own
``max_output_tokens``, else the session's: it is estimated as the Responses call with that
prompt and limit would be (:func:`fleetgate.estimate.estimate_request`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fleetgate.estimate import Estimate, content_text, estimate_request

__all__ = ["RealtimeSession"]


class RealtimeSession:
    def __init__(self, model: str | None) -> None:
        """`model`: the one ``connect()`` named (None: joined a call by its id)."""
        self.model = model
        self._instructions = ""
        self._max_output: int | None = None
        self._said: list[str] = []

    def update(self, event: dict[str, Any]) -> None:
        """Take in a frame the client sends: a ``session.update`` or a
        ``conversation.item.create`` (any other frame tells nothing here)."""
        kind = event.get("type")
        if kind == "session.update" and isinstance(event.get("session"), dict):
            session = event["session"]
            if isinstance(session.get("model"), str) and session["model"]:
                self.model = session["model"]
            if isinstance(session.get("instructions"), str):
                self._instructions = session["instructions"]
            if "max_output_tokens" in session:
                limit = session["max_output_tokens"]
                self._max_output = limit if isinstance(limit, int) and limit > 0 else None
        elif kind == "conversation.item.create" and isinstance(event.get("item"), dict):
            self._said.append(content_text(event["item"].get("content")))

    def estimate(self, options: Any, assumed: int, model: str | None = None) -> Estimate | None:
        """A response with the `options` of its ``response.create`` (None: the session's
        own, as a response the server starts is), by `model` (None: the session's);
        None when the model is not known."""
        model = model or self.model
        if not model:
            return None
        asked: dict[str, Any] = options if isinstance(options, dict) else {}
        texts = [asked.get("instructions") or self._instructions]
        if asked.get("conversation") != "none":
            texts += self._said
        texts += [content_text(i.get("content")) for i in asked.get("input") or [] if isinstance(i, dict)]
        body = {"model": model, "input": "\n".join(t for t in texts if isinstance(t, str) and t),
                "max_output_tokens": asked.get("max_output_tokens", self._max_output)}
        return dataclasses.replace(estimate_request("/responses", body, assumed), endpoint="/realtime")

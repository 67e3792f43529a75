"""The endpoints a Batch API line (and a ``fleetgate run`` line) may target, and what each
needs of a request body before it is worth sending.

OpenAI's Batch API accepts ``/v1/responses``, ``/v1/chat/completions``,
``/v1/embeddings``, ``/v1/completions``, ``/v1/moderations``,
``/v1/images/generations`` and ``/v1/images/edits``. ``/v1/videos`` is refused: the
Videos API shut down on 2026-09-24 and batch creation no longer accepts it.

Of these, the gateway gates three (:data:`fleetgate.estimate.GATED_PATHS`: chat
completions, responses, embeddings): their synchronous calls wait for the fleet's quotas
and budgets. The others pass through a gateway's transport untouched.

Each check names what is wrong with a body, never its content::

    >>> from fleetgate.endpoints import body_problem
    >>> body_problem("/v1/completions", {"model": "gpt-3.5-turbo-instruct"})
    'body.prompt is missing: a completion needs a prompt (a string, a list of strings or of token ids)'
    >>> body_problem("/v1/moderations", {"model": "omni-moderation-latest", "input": "hello"}) is None
    True
"""

from __future__ import annotations

from typing import Any

from fleetgate._core import count_tokens
from fleetgate.estimate import GATED_PATHS

__all__ = ["BATCH_ENDPOINTS", "IMAGE_INPUT_TOKENS", "MAX_EDIT_IMAGES", "MAX_EMBEDDING_INPUTS",
           "MAX_INPUTS_PER_REQUEST", "RETIRED", "body_problem", "embedding_inputs", "gated",
           "image_output_tokens", "request_size", "url_problem"]

#: Every endpoint a batch (one endpoint per batch file) may target today.
BATCH_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions", "/v1/moderations",
                   "/v1/images/generations", "/v1/images/edits")
#: Endpoints OpenAI once accepted in batches, and why they are refused now.
RETIRED = {"/v1/videos": "/v1/videos is no longer accepted: the Videos API shut down on 2026-09-24 and batch "
                         "creation refuses it; remove these lines"}
#: Embedding inputs across all the requests of one batch, at most.
MAX_EMBEDDING_INPUTS = 50_000
#: Embedding inputs in one request, at most.
MAX_INPUTS_PER_REQUEST = 2_048
#: Input images one edit may take, at most.
MAX_EDIT_IMAGES = 16
#: What one input image of an edit is counted as, in tokens (a 1024x1024 image at high
#: detail); an answer's usage says what it really counted.
IMAGE_INPUT_TOKENS = 765

# Output tokens of one image by quality and size, as GPT Image models bill them; an
# unknown or automatic quality counts as high, an unknown or automatic size as the
# largest, so the estimate is the most an image may cost.
_IMAGE_TOKENS = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}


def gated(url: str) -> bool:
    """Whether the gateway gates synchronous calls to `url` (quotas, budgets, cache)."""
    return url.removeprefix("/v1") in GATED_PATHS


def url_problem(url: Any) -> str | None:
    """Why a line's `url` cannot be sent in a batch, or None."""
    if isinstance(url, str) and url in RETIRED:
        return RETIRED[url]
    if url not in BATCH_ENDPOINTS:
        # Not echoed: a line's content stays out of reports (its number finds it).
        return f"url must be one of {', '.join(BATCH_ENDPOINTS)}"
    return None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in value)


def _texts_or_tokens(value: Any) -> int | None:
    """How many inputs `value` is (a string, a list of strings, a list of token ids or a
    list of such lists), or None when it is none of these."""
    if _nonempty_str(value) or _token_ids(value):
        return 1
    if isinstance(value, list) and value and all(_nonempty_str(v) or _token_ids(v) for v in value):
        return len(value)
    return None


def _image_ref(value: Any) -> bool:
    return isinstance(value, dict) and sum(_nonempty_str(value.get(k)) for k in ("image_url", "file_id")) == 1


def _moderation_input(value: Any) -> bool:
    """A string, a list of strings, or a list of text and image_url parts."""
    if _nonempty_str(value):
        return True
    if not isinstance(value, list) or not value:
        return False
    if all(_nonempty_str(v) for v in value):
        return True
    return all(isinstance(v, dict) and ((v.get("type") == "text" and _nonempty_str(v.get("text")))
                                        or (v.get("type") == "image_url" and isinstance(v.get("image_url"), dict)
                                            and _nonempty_str(v["image_url"].get("url"))))
               for v in value)


def _count(body: dict[str, Any], name: str, low: int, high: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return f"body.{name} must be an integer from {low} to {high}"
    return None


def body_problem(url: str, body: dict[str, Any]) -> str | None:
    """What `body` lacks for `url` (one of :data:`BATCH_ENDPOINTS`), or None. The model and
    ``stream`` are checked with the line (see :mod:`fleetgate.batch.split`)."""
    if url == "/v1/chat/completions":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            return "body.messages must be a non-empty list of messages"
    elif url == "/v1/responses":
        if body.get("input") is None and not isinstance(body.get("prompt"), dict):
            return "body.input is missing: a response needs an input (or a prompt template)"
        if body.get("input") is not None and not isinstance(body["input"], (str, list)):
            return "body.input must be a string or a list of input items"
    elif url == "/v1/embeddings":
        inputs = _texts_or_tokens(body.get("input"))
        if inputs is None:
            return "body.input must be a non-empty string, a list of them, or token ids"
        if inputs > MAX_INPUTS_PER_REQUEST:
            return f"body.input has {inputs} inputs; an embeddings request takes at most {MAX_INPUTS_PER_REQUEST:,}"
    elif url == "/v1/completions":
        if body.get("prompt") is None:
            return "body.prompt is missing: a completion needs a prompt (a string, a list of strings or of token ids)"
        if _texts_or_tokens(body["prompt"]) is None:
            return "body.prompt must be a non-empty string, a list of them, or token ids"
    elif url == "/v1/moderations":
        if not _moderation_input(body.get("input")):
            return ("body.input must be a non-empty string, a list of them, or a list of text and image_url "
                    "parts")
    elif url in ("/v1/images/generations", "/v1/images/edits"):
        if not _nonempty_str(body.get("prompt")):
            return "body.prompt must be a non-empty string: an image needs a prompt"
        if (problem := _count(body, "n", 1, 10)) is not None:
            return problem
        if url == "/v1/images/edits":
            if "image" in body:
                return ("body.image is a file upload, which a JSON line cannot carry: name the images as "
                        'body.images = [{"image_url": ...} or {"file_id": ...}]')
            images = body.get("images")
            if not isinstance(images, list) or not 1 <= len(images) <= MAX_EDIT_IMAGES or not all(
                    _image_ref(i) for i in images):
                return (f"body.images must list 1 to {MAX_EDIT_IMAGES} images, each with one of image_url or "
                        "file_id")
            if body.get("mask") is not None and not _image_ref(body["mask"]):
                return "body.mask must have one of image_url or file_id"
    return None


def embedding_inputs(body: dict[str, Any]) -> int:
    """The embedding inputs of a request (what counts against a batch's 50,000)."""
    return _texts_or_tokens(body.get("input")) or 0


def image_output_tokens(body: dict[str, Any]) -> int:
    """The most output tokens an image request may produce: ``n`` images at its quality
    and size (an unknown or automatic one counted at the dearest)."""
    table = _IMAGE_TOKENS.get(str(body.get("quality")), _IMAGE_TOKENS["high"])
    per_image = table.get(str(body.get("size")), max(table.values()))
    n = body.get("n")
    return per_image * (n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1)


def _text_tokens(model: str, text: str) -> int:
    """As the core counts a prompt: its tokens or OpenAI's four characters per token,
    whichever is larger."""
    return max(count_tokens(model, text), -(-len(text) // 4))


def _inputs_tokens(model: str, value: Any) -> int:
    if isinstance(value, str):
        return _text_tokens(model, value)
    if _token_ids(value):
        return len(value)
    if isinstance(value, list):
        return sum(_inputs_tokens(model, v) for v in value if isinstance(v, (str, list)))
    return 0


def request_size(url: str, model: str, body: dict[str, Any]) -> tuple[int, int]:
    """(prompt, most output) tokens a request counts against a batch's enqueued-token
    limit and its budget's worst case, for the endpoints sized here: embeddings and images
    (the core sizes the others)."""
    if url == "/v1/embeddings":
        return _inputs_tokens(model, body.get("input")), 0
    images = body.get("images")
    given = len(images) if isinstance(images, list) else 0
    prompt = _text_tokens(model, str(body.get("prompt") or "")) + IMAGE_INPUT_TOKENS * given
    return prompt, image_output_tokens(body)

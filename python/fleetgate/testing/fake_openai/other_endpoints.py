"""The fake API's legacy completions, moderations and image endpoints, answered live and
inside batches: each request validated as OpenAI does and answered with an object of the
API's shape (minimal: one choice, no logprobs; images as a tiny PNG).

Completions and images report usage and are billed; moderations are free and report none.
Streaming is not simulated here (a 400 says so). Image edits take the JSON form a batch line
can carry: ``images`` (and ``mask``) as ``{"image_url": ...}`` or ``{"file_id": ...}``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from fleetgate.testing.fake_openai import content
from fleetgate.testing.fake_openai.api import ApiError, Completion, _answer, _max_output, _require, new_id
from fleetgate.testing.fake_openai.config import FakeConfig

__all__ = ["PLANNERS", "plan_completions", "plan_image_edits", "plan_image_generations", "plan_moderations", "routes"]

#: The default of a completion's ``max_tokens``, as the API has it.
COMPLETION_MAX_TOKENS = 16
MODERATION_MODEL = "omni-moderation-latest"
IMAGE_MODEL = "gpt-image-1.5"
#: Output tokens of one image by quality, at 1024x1024 (other sizes: half as much again).
IMAGE_TOKENS = {"low": 272, "medium": 1056, "high": 4160}
#: Input tokens of one image given to an edit.
INPUT_IMAGE_TOKENS = 323
#: A 1x1 transparent PNG, the data of every fake image.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
               "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
               "violence/graphic")
#: Words the fake flags, by category.
_FLAGGED = {"kill": "violence", "attack": "violence", "hate": "hate"}


def _no_stream(body: dict[str, Any], endpoint: str) -> None:
    if body.get("stream"):
        raise ApiError(400, f"The fake OpenAI server does not simulate streaming for {endpoint}: send "
                            "stream=false.", param="stream", code="unsupported_value")


def _prompt_text(value: Any, name: str) -> tuple[str, int]:
    """A prompt or input's text, and its token ids' count (for prompts given as ids)."""
    if isinstance(value, str) and value:
        return value, 0
    if isinstance(value, list) and value:
        if all(isinstance(v, int) for v in value):
            return "", len(value)
        if all(isinstance(v, str) and v for v in value):
            return "\n".join(value), 0
        if all(isinstance(v, list) and v and all(isinstance(i, int) for i in v) for v in value):
            return "", sum(len(v) for v in value)
    raise ApiError(400, f"Invalid type for '{name}': expected a non-empty string, array of strings, array of "
                        "tokens, or array of token arrays.", param=name, code="invalid_type")


# -- completions ----------------------------------------------------------------------------


def plan_completions(config: FakeConfig, body: dict[str, Any]) -> Completion:
    model = _require(body, "model", str)
    if body.get("prompt") is None:
        raise ApiError(400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    _no_stream(body, "/v1/completions")
    prompt, ids = _prompt_text(body["prompt"], "prompt")
    limit = _max_output(body, "max_tokens") or COMPLETION_MAX_TOKENS
    prompt_tokens = content.estimate_tokens(prompt) + ids
    text, tokens, finish = _answer(config, model, prompt, limit)
    plan = Completion("completions", model, body, prompt, prompt_tokens, prompt_tokens + limit, text, tokens, finish,
                      render_body=_completion_body)
    plan.own_usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}
    return plan


def _completion_body(config: FakeConfig, plan: Completion, text: str) -> dict[str, Any]:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": plan.model,
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": plan.finish_reason}],
            "usage": dict(plan.own_usage or {}), "system_fingerprint": "fp_fleetgate_fake"}


# -- moderations ----------------------------------------------------------------------------


def _moderation_texts(value: Any) -> list[tuple[str, bool]]:
    """Each input of a moderation: its text, and whether it is an image."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        parts = []
        for part in value:
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append((part["text"], False))
            elif part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
                parts.append((str(part["image_url"].get("url", "")), True))
            else:
                raise ApiError(400, "Invalid 'input': each part must be a text or image_url part.", param="input",
                               code="invalid_value")
        return parts
    if isinstance(value, str) and value:
        return [(value, False)]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return [(v, False) for v in value]
    raise ApiError(400, "Invalid type for 'input': expected a string, an array of strings, or an array of "
                        "multi-modal inputs.", param="input", code="invalid_type")


def plan_moderations(config: FakeConfig, body: dict[str, Any]) -> Completion:
    if body.get("input") is None:
        raise ApiError(400, "Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    model = body.get("model") or MODERATION_MODEL
    if not isinstance(model, str):
        raise ApiError(400, "Invalid type for 'model'.", param="model", code="invalid_type")
    parts = _moderation_texts(body["input"])
    prompt = "\n".join(text for text, image in parts if not image)
    tokens = content.estimate_tokens(prompt)
    # One result per input (a multi-modal input is one result for all its parts).
    results = [parts] if isinstance(body["input"], list) and isinstance(body["input"][0], dict) else [[p] for p in parts]
    return Completion("moderations", model, body, prompt, tokens, tokens, render_body=_moderation_body,
                      inputs=tuple("\n".join(t for t, _ in r) for r in results))


def _moderation_body(config: FakeConfig, plan: Completion, text: str) -> dict[str, Any]:
    results = []
    for item in plan.inputs:
        words = {w.strip(".,!?").lower() for w in item.split()}
        hit = {_FLAGGED[w] for w in words if w in _FLAGGED}
        digest = hashlib.sha256(item.encode()).digest()
        scores = {c: (0.9 if c in hit else digest[i] / 255 / 100) for i, c in enumerate(_CATEGORIES)}
        results.append({"flagged": bool(hit), "categories": {c: c in hit for c in _CATEGORIES},
                        "category_scores": scores, "category_applied_input_types": {c: ["text"] for c in _CATEGORIES}})
    return {"id": new_id("modr"), "model": plan.model, "results": results}


# -- images ---------------------------------------------------------------------------------


def _image_ref(value: Any) -> bool:
    return isinstance(value, dict) and sum(isinstance(value.get(k), str) and bool(value[k])
                                           for k in ("image_url", "file_id")) == 1


def _plan_image(config: FakeConfig, body: dict[str, Any], endpoint: str, input_images: int) -> Completion:
    model = body.get("model") or IMAGE_MODEL
    prompt = _require(body, "prompt", str)
    _no_stream(body, endpoint)
    n = body.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= 10:
        raise ApiError(400, "Invalid 'n': must be an integer from 1 to 10.", param="n", code="invalid_value")
    quality = body.get("quality") or "auto"
    size = body.get("size") or "auto"
    per_image = IMAGE_TOKENS.get(quality, IMAGE_TOKENS["medium"])
    if size not in ("1024x1024", "auto"):
        per_image = per_image * 3 // 2
    text_tokens = content.estimate_tokens(prompt)
    image_tokens = INPUT_IMAGE_TOKENS * input_images
    prompt_tokens = text_tokens + image_tokens
    output = per_image * n
    plan = Completion("images", str(model), body, prompt, prompt_tokens, prompt_tokens + output,
                      completion_tokens=output, render_body=_image_body)
    plan.own_usage = {"input_tokens": prompt_tokens,
                      "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
                      "output_tokens": output, "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
                      "total_tokens": prompt_tokens + output}
    return plan


def plan_image_generations(config: FakeConfig, body: dict[str, Any]) -> Completion:
    return _plan_image(config, body, "/v1/images/generations", 0)


def plan_image_edits(config: FakeConfig, body: dict[str, Any]) -> Completion:
    if "image" in body:
        raise ApiError(400, "The fake OpenAI server takes image edits as JSON: name the images in 'images' "
                            "(each an image_url or a file_id), not as a file upload in 'image'.", param="image",
                       code="unsupported_value")
    images = body.get("images")
    if not isinstance(images, list) or not 1 <= len(images) <= 16 or not all(_image_ref(i) for i in images):
        raise ApiError(400, "Invalid 'images': 1 to 16 references, each with one of image_url or file_id.",
                       param="images", code="invalid_value")
    if body.get("mask") is not None and not _image_ref(body["mask"]):
        raise ApiError(400, "Invalid 'mask': one of image_url or file_id.", param="mask", code="invalid_value")
    return _plan_image(config, body, "/v1/images/edits", len(images))


def _image_body(config: FakeConfig, plan: Completion, text: str) -> dict[str, Any]:
    n = plan.body.get("n", 1)
    quality = plan.body.get("quality") or "auto"
    return {"created": int(time.time()), "data": [{"b64_json": PNG} for _ in range(n)], "background": "opaque",
            "output_format": plan.body.get("output_format") or "png",
            "quality": "medium" if quality == "auto" else quality,
            "size": plan.body.get("size") if plan.body.get("size") not in (None, "auto") else "1024x1024",
            "usage": dict(plan.own_usage or {})}


#: Planners by endpoint, for the HTTP routes and the batch runner.
PLANNERS: dict[str, Callable[[FakeConfig, dict[str, Any]], Completion]] = {
    "/v1/completions": plan_completions,
    "/v1/moderations": plan_moderations,
    "/v1/images/generations": plan_image_generations,
    "/v1/images/edits": plan_image_edits,
}

Complete = Callable[[web.Request, Callable[[FakeConfig, dict[str, Any]], Completion]], Awaitable[web.StreamResponse]]


def routes(complete: Complete) -> list[web.RouteDef]:
    """The HTTP routes of these endpoints, each answered by `complete` (the server's path
    through limits, faults and billing) with its planner."""
    def handler(planner: Callable[[FakeConfig, dict[str, Any]], Completion]) -> Callable[
            [web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await complete(request, planner)
        return handle

    return [web.post(path, handler(planner)) for path, planner in PLANNERS.items()]

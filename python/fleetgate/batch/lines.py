"""Batch input lines checked where the Rust core's ``Splitter`` does not check them.

The core checks and sizes lines for chat completions, responses, completions and
moderations at speed; before it sees a block, :class:`BodyChecks` holds each line's
``url`` and ``body`` to what its endpoint needs (:func:`fleetgate.endpoints.body_problem`)
and blanks the lines that fail (the core skips blank lines, so line numbers hold).

:class:`LineSplitter` is a Python copy of the core's ``Splitter``
(``rust/core/src/batch_lines.rs``), kept only because the core cannot split two kinds of
file yet: images (its endpoint list stops at moderations, so it refuses their lines) and
embeddings (its chunks have no limit on inputs, and a batch holds at most 50,000
embedding inputs across its requests). It follows the core's rules and wording (all but
the JSON parser's own account of a line that is not JSON), and
``tests/test_batch_endpoints.py`` holds it to the core's chunks and problems on the lines
both can split. Once the core lists the image endpoints and takes an inputs limit per
chunk, it goes, and :func:`fleetgate.batch.split.split_file` hands every file to the core.
"""

from __future__ import annotations

import json
from typing import Any

from fleetgate.endpoints import BATCH_ENDPOINTS, MAX_EMBEDDING_INPUTS, body_problem, embedding_inputs, request_size, \
    url_problem

__all__ = ["SIZED_HERE", "BodyChecks", "LineSplitter", "first_endpoint"]

#: Endpoints whose files :class:`LineSplitter` splits (the core splits the others).
SIZED_HERE = ("/v1/embeddings", "/v1/images/generations", "/v1/images/edits")
_MAX_CUSTOM_ID = 64
#: Lines read, at most, looking for a file's endpoint.
_PEEK_LINES = 10_000

#: What ``split`` returns for a run of lines, as the core's ``Splitter`` does: (chunk, start,
#: end, lines, tokens, output tokens).
Run = tuple[int, int, int, int, int, int]


def first_endpoint(path: Any) -> str | None:
    """The endpoint of the file's first line that names one it may target (the file's
    endpoint: every other line must name it too), or None."""
    with open(path, "rb") as lines:
        for number, raw in enumerate(lines):
            if number >= _PEEK_LINES:
                break
            try:
                item = json.loads(raw)
            except ValueError:
                continue
            if isinstance(item, dict) and item.get("url") in BATCH_ENDPOINTS:
                return str(item["url"])
    return None


def _lines(block: bytes) -> list[bytes]:
    """The lines of `block` (whole lines: it ends with a line ending, or the file does)."""
    parts = block.split(b"\n")
    return parts[:-1] if block.endswith(b"\n") or not block else parts


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _endpoint_problem(url: Any, endpoint: str | None) -> str | None:
    problem = url_problem(url)
    if problem is None and endpoint is not None and url != endpoint:
        return f"url must be {endpoint}, the file's endpoint (one endpoint per batch)"
    return problem


class BodyChecks:
    """Each line's ``url`` and ``body`` checked before the core sizes it: a line that
    fails is blanked in the block and reported with its number."""

    def __init__(self, endpoint: str | None) -> None:
        self.endpoint = endpoint
        self._next = 1

    def check(self, block: bytes) -> tuple[bytes, list[tuple[int, str]]]:
        """`block` with its failing lines blanked (same length), and their problems."""
        problems: list[tuple[int, str]] = []
        blanked: bytearray | None = None
        offset = 0
        lines = _lines(block)
        for index, raw in enumerate(lines):
            reason = self._reason(raw)
            if reason is not None:
                problems.append((self._next + index, reason))
                if blanked is None:
                    blanked = bytearray(block)
                blanked[offset:offset + len(raw)] = b" " * len(raw)
            offset += len(raw) + 1
        self._next += len(lines)
        return (bytes(blanked) if blanked is not None else block), problems

    def _reason(self, raw: bytes) -> str | None:
        """What is wrong with the line's url or body; None when it is fine or when the core
        reports it (not JSON, not an object, no body)."""
        if not raw.strip():
            return None
        try:
            item = json.loads(raw)
        except ValueError:
            return None
        if not isinstance(item, dict):
            return None
        problem = _endpoint_problem(item.get("url"), self.endpoint)
        if problem is not None:
            return problem
        body = item.get("body")
        return body_problem(item["url"], body) if isinstance(body, dict) else None


class LineSplitter:
    """The core ``Splitter`` written again in Python, for the files it cannot split yet
    (:data:`SIZED_HERE`; see the module's docstring): the same ``split`` and properties,
    each line checked and sized, and cut into chunks within lines, bytes, enqueued tokens
    and, beyond the core, `max_inputs` embedding inputs. Its constructor is the core's
    without ``default_max_output``: no request sized here has an output maximum to
    default (embeddings produce none; images as many tokens as their ``n``, quality and
    size say)."""

    def __init__(self, *, max_lines: int, max_bytes: int, max_tokens: int, model_tokens: dict[str, int] | None = None,
                 endpoint: str, max_inputs: int | None = None) -> None:
        self._limits = [max_lines, max_bytes, max_tokens,
                        max_inputs or (MAX_EMBEDDING_INPUTS if endpoint == "/v1/embeddings" else 1 << 62)]
        self._model_tokens = model_tokens or {}
        self._endpoint = endpoint
        self._model: str | None = None
        self._seen: set[str] = set()
        self._read = 0
        self._chunk = 0
        self._used = [0, 0, 0, 0]  # lines, bytes, tokens, inputs of the chunk being filled

    @property
    def endpoint(self) -> str | None:
        return self._endpoint

    @property
    def model(self) -> str | None:
        return self._model

    @property
    def lines_read(self) -> int:
        return self._read

    def split(self, block: bytes) -> tuple[list[Run], list[tuple[int, str]]]:
        runs: list[Run] = []
        problems: list[tuple[int, str]] = []
        offset = 0
        for raw in _lines(block):
            self._read += 1
            start, end = offset, offset + len(raw) - (1 if raw.endswith(b"\r") else 0)
            offset += len(raw) + 1
            if not raw.strip():
                continue
            verdict = self._admit(raw)
            if isinstance(verdict, str):
                problems.append((self._read, verdict))
                continue
            prompt, output, inputs = verdict
            size = [1, end - start + 1, prompt + output, inputs]
            over = next((i for i in range(1, 4) if size[i] > self._limits[i]), None)
            if over is not None:
                what = {1: f"the line is {size[1]} bytes, more than a batch may hold ({self._limits[1]})",
                        2: f"the request counts {size[2]} tokens, more than a batch of this model may enqueue "
                           f"({self._limits[2]})",
                        3: f"the request has {size[3]} embedding inputs, more than a batch may hold ({self._limits[3]})"}
                problems.append((self._read, what[over]))
                continue
            if self._used[0] > 0 and any(self._used[i] + size[i] > self._limits[i] for i in range(4)):
                self._chunk += 1
                self._used = [0, 0, 0, 0]
            self._used = [u + s for u, s in zip(self._used, size)]
            runs.append((self._chunk, start, end, 1, prompt + output, output))
        return runs, problems

    def _admit(self, raw: bytes) -> tuple[int, int, int] | str:
        """(prompt tokens, most output, embedding inputs) of a line, or why it cannot be sent."""
        try:
            item = json.loads(raw)
        except UnicodeDecodeError:
            return "not valid UTF-8"
        except json.JSONDecodeError as e:
            return f"not valid JSON ({e.msg} at column {e.colno})"
        if not isinstance(item, dict):
            return "a line must be a JSON object"
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return "missing a string custom_id"
        if len(custom_id) > _MAX_CUSTOM_ID:
            return f"custom_id is longer than {_MAX_CUSTOM_ID} characters"
        if item.get("method") != "POST":
            return 'method must be "POST"'
        if (problem := _endpoint_problem(item.get("url"), self._endpoint)) is not None:
            return problem
        body = item.get("body")
        if not isinstance(body, dict):
            return "body must be a JSON object"
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return "body has no model"
        if body.get("stream") not in (None, False):
            return "streaming requests cannot be batched (remove body.stream)"
        if (problem := body_problem(self._endpoint, body)) is not None:
            return problem
        if self._model is None:
            self._model = model
            self._limits[2] = self._model_tokens.get(model, self._limits[2])
        elif model != self._model:
            return f"model {_quoted(model)} differs from the file's model {_quoted(self._model)} (one model per batch)"
        if custom_id in self._seen:
            return f"custom_id {_quoted(custom_id)} appears more than once"
        self._seen.add(custom_id)
        prompt, output = request_size(self._endpoint, model, body)
        inputs = embedding_inputs(body) if self._endpoint == "/v1/embeddings" else 0
        return prompt, output, inputs

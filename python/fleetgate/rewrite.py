"""Requests the gateway sends in place of the caller's: the same request with a new body."""

from __future__ import annotations

import json
from typing import Any

import httpx2

__all__ = ["with_body"]


def with_body(request: httpx2.Request, body: dict[str, Any]) -> httpx2.Request:
    """`request` with `body` (JSON) in place of its own; headers and extensions kept."""
    content = json.dumps(body).encode()
    headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() != "content-length"]
    return httpx2.Request(request.method, request.url, headers=headers, content=content, extensions=request.extensions)

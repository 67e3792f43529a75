"""``fleetgate serve`` (``[serve]``): the gateway as an OpenAI-compatible server, and the
keys its callers present (:mod:`fleetgate.serve`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ServeKey", "ServeSettings"]

_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")


class ServeKey(BaseModel):
    """A key callers present (``Authorization: Bearer fgk-…``), listed by its hash
    (``fleetgate keys create`` prints both), and who a call made with it is."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Names it in ``fleetgate keys list`` and in logs: letters, digits, ``._-``.
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$", max_length=64)
    #: ``sha256:<64 hex digits>`` of the key; the key itself is never stored.
    hash: str
    #: The scope of its calls: their user, team and feature quotas and budgets.
    user: str | None = None
    team: str | None = None
    feature: str | None = None
    #: The models it may call (empty: any).
    models: list[str] = Field(default_factory=list)

    @field_validator("hash")
    @classmethod
    def _sha256(cls, value: str) -> str:
        if not _HASH.match(value):
            raise ValueError('a key is listed by its hash, "sha256:" and 64 lowercase hex digits, as '
                             "`fleetgate keys create` prints it")
        return value


class ServeSettings(BaseModel):
    """The server (``fleetgate serve``): where it listens, who may call it, and its limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8400, ge=0, le=65_535)
    #: Worker processes, sharing quotas, budgets and breakers through Redis (several need it).
    workers: int = Field(default=1, ge=1, le=256)
    #: ``keys``: callers present a key fleetgate issued (listed below, or created in Redis
    #: with ``fleetgate keys create``), and the server calls upstream with its own key;
    #: ``pass_through`` (a trusted network): the caller's OpenAI key is sent upstream, and
    #: its scope is what its ``x-fleetgate-user``, ``-team`` and ``-feature`` headers say.
    auth: Literal["keys", "pass_through"] = "keys"
    keys: list[ServeKey] = Field(default_factory=list)
    #: The environment variable holding the OpenAI key the server calls upstream with
    #: (deployments with keys of their own use theirs).
    api_key_env: str = "OPENAI_API_KEY"
    #: A request body larger than this is refused (413) before it is read whole.
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    #: On SIGTERM: how long calls in flight (streams included) may take to finish.
    drain_seconds: float = Field(default=30.0, ge=0, le=3_600)
    #: How long an idle keep-alive connection from a client is kept open.
    keep_alive_seconds: float = Field(default=75.0, gt=0, le=3_600)
    #: How long a key found in Redis is trusted in process before it is read again (a
    #: revoked key stops working everywhere within this).
    key_cache_seconds: float = Field(default=5.0, ge=0, le=3_600)

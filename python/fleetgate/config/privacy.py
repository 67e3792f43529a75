"""``[privacy]``: the key of the pseudonyms that stand for users (and for the teams or
features named sensitive) wherever a name leaves the process (see :mod:`fleetgate.privacy`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = ["PrivacySettings"]


class PrivacySettings(BaseModel):
    """``[privacy]``: ``key`` (or ``FLEETGATE_PRIVACY__KEY``), at least 16 characters and
    the same on every pod of a fleet; None: with Redis, one random key the first pod stores
    there for the fleet; embedded, a random key for the process. ``sensitive``: the scope
    fields hashed besides the user (always hashed): ``"team"``, ``"feature"``.

    The key's length is checked when the gateway starts (:class:`fleetgate.privacy.Privacy`),
    not here: a validation error would print the value it refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)
    key: SecretStr | None = None
    sensitive: list[Literal["user", "team", "feature"]] = Field(default_factory=list)

"""The keys callers of ``fleetgate serve`` present, issued by fleetgate: ``fgk-`` and 43
random characters, shown once when made and kept only as their SHA-256 hash.

A key is listed in the config (``[[serve.keys]]``, by its hash) or kept in Redis, in one
hash, ``fg:serve:keys`` (field: the key's hash; value: who it stands for, as JSON), where
``fleetgate keys create/list/revoke`` manage it for the whole fleet. A key found in Redis
is trusted in process for ``[serve] key_cache_seconds``, so a revoked one stops working
everywhere within that. Each key stands for a :class:`Caller`: the user, team and feature
its calls are scoped to, and the models it may call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fleetgate.config.serve import ServeKey, ServeSettings
from fleetgate.errors import ConfigError, StoreUnavailable
from fleetgate.redis_clients import redacted_url, redis_client

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["KEYS_HASH", "Caller", "Keys", "key_hash", "new_key"]

#: The Redis hash holding the fleet's keys.
KEYS_HASH = "fg:serve:keys"
_PREFIX = "fgk-"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def new_key() -> str:
    """A new key: ``fgk-`` and 256 random bits."""
    return _PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    """What a key is listed and stored by: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a key stands for."""

    name: str
    user: str | None = None
    team: str | None = None
    feature: str | None = None
    #: The models it may call (empty: any).
    models: tuple[str, ...] = ()
    #: Unix seconds it was made (0: listed in the config).
    created: float = 0.0
    #: Where it is kept: ``config`` or ``redis``.
    source: str = field(default="config", compare=False)

    def may_call(self, model: str) -> bool:
        return not self.models or model in self.models

    @classmethod
    def of(cls, key: ServeKey) -> Caller:
        return cls(key.name, key.user, key.team, key.feature, tuple(key.models))


class Keys:
    """The keys of one server: its config's, and the fleet's in Redis (`redis_url`)."""

    def __init__(self, settings: ServeSettings, redis_url: str | None) -> None:
        self.settings = settings
        self._configured = {k.hash: Caller.of(k) for k in settings.keys}
        self._url = redis_url
        self._redis: redis.Redis | redis.cluster.RedisCluster | None = None
        #: Keys read from Redis: hash -> (caller or None for none, read at).
        self._seen: dict[str, tuple[Caller | None, float]] = {}

    async def caller_async(self, key: str) -> Caller | None:
        """Who `key` stands for, or None: it is not a key of this fleet. Raises
        StoreUnavailable when Redis, which may hold it, does not answer."""
        hashed = key_hash(key)
        found = self._configured.get(hashed)
        if found is not None or self._url is None or not key.startswith(_PREFIX):
            return found
        seen = self._seen.get(hashed)
        if seen is not None and time.monotonic() - seen[1] < self.settings.key_cache_seconds:
            return seen[0]
        caller = await asyncio.to_thread(self._read, hashed)
        if len(self._seen) > 100_000:
            self._seen.clear()
        self._seen[hashed] = (caller, time.monotonic())
        return caller

    def _read(self, hashed: str) -> Caller | None:
        try:
            raw = self._client().hget(KEYS_HASH, hashed)
        except Exception as e:  # noqa: BLE001 - any failure of the store: said as StoreUnavailable
            raise StoreUnavailable(f"the keys' Redis at {redacted_url(self._url or '')} did not answer ({e}): a "
                                   "caller's key cannot be checked; check that Redis is reachable") from e
        return _decoded(raw) if raw is not None else None

    # -- the fleet's keys, in Redis (fleetgate keys) -------------------------------------------

    def create(self, name: str, *, user: str | None = None, team: str | None = None, feature: str | None = None,
               models: list[str] | None = None) -> str:
        """A new key for the fleet, kept in Redis by its hash; the key itself is returned
        once. ConfigError: no Redis, a bad name, or one already used."""
        if not _NAME.match(name):
            raise ConfigError(f"a key's name is letters, digits and ._- (at most 64), not {name!r}")
        existing = {c.name for c in self.listed()}
        if name in existing:
            raise ConfigError(f"a key named {name!r} exists already: revoke it first, or choose another name")
        key = new_key()
        caller = Caller(name, user, team, feature, tuple(models or ()), time.time(), "redis")
        record = {k: v for k, v in asdict(caller).items() if k != "source"}
        self._client().hset(KEYS_HASH, key_hash(key), json.dumps(record))
        return key

    def listed(self) -> list[Caller]:
        """Every key: the config's, then the fleet's (by name)."""
        found = list(self._configured.values())
        if self._url is not None:
            found += sorted((c for raw in self._client().hvals(KEYS_HASH) if (c := _decoded(raw)) is not None),
                            key=lambda c: c.name)
        return found

    def revoke(self, name: str) -> bool:
        """Remove the fleet's key named `name`; False when there is none (a key listed in
        the config is removed from the config)."""
        client = self._client()
        for hashed, raw in client.hgetall(KEYS_HASH).items():
            caller = _decoded(raw)
            if caller is not None and caller.name == name:
                client.hdel(KEYS_HASH, hashed)
                return True
        return False

    def _client(self) -> redis.Redis | redis.cluster.RedisCluster:
        if self._url is None:
            raise ConfigError("the fleet's keys are kept in Redis: set redis_url (or FLEETGATE_REDIS_URL), or list "
                              "keys in the config ([[serve.keys]], with the hash `fleetgate keys create --print` shows)")
        if self._redis is None:
            self._redis = redis_client(self._url)
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()


def _decoded(raw: Any) -> Caller | None:
    """A caller as kept in Redis; None when the record is not one."""
    try:
        record = json.loads(raw)
        return Caller(str(record["name"]), record.get("user"), record.get("team"), record.get("feature"),
                      tuple(record.get("models") or ()), float(record.get("created") or 0.0), "redis")
    except (ValueError, TypeError, KeyError):
        return None

"""Pseudonyms: what stands for a user id (and for a team or feature the config calls
sensitive) wherever a name leaves the process: quota and budget names, log lines,
exception messages and attributes, refusal bodies, request records, metric labels, trace
attributes and the spend ledger with its reports.

1. The key, once per gateway: ``[privacy] key`` (``FLEETGATE_PRIVACY__KEY``) when set.
   Otherwise, with Redis, a random key the first pod stores at ``fg:privacy:key`` (``SET
   NX``) and every pod reads when it starts; embedded, a random key for the process (so
   records link across restarts only with a configured key). A pod that cannot read the
   fleet's key at start uses one of its own, says so, and asks again in the background
   every :attr:`Privacy.retry_seconds`: until it reads it, its names do not match the
   fleet's; then they do (whoever remembers names made from the key hears of the change
   through :meth:`Privacy.on_rekey`).
2. A pseudonym: keyed BLAKE2b (a MAC) of the value, 80 bits, with a prefix naming its
   kind: ``user:u_3f9a…``, ``team:t_…``, ``feature:f_…``. The same value has the same
   pseudonym on every pod that shares the key, so an operator can follow one user from a
   refusal to a log line to a cost report; without the key, a list of likely ids cannot be
   matched to them.
3. Remembered: a value seen before costs one dictionary lookup; no round trip, ever.

    privacy = Privacy.from_settings(config.privacy, config.redis_url)
    privacy.label("user", "u-42")        # 'u_…' (20 hex digits)
    privacy.label("feature", "support")  # 'support' unless "feature" is sensitive

The key never appears in a log, an error or a repr.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
from collections.abc import Callable, Iterable

from fleetgate.config.privacy import PrivacySettings
from fleetgate.errors import ConfigError
from fleetgate.redis_clients import redacted_url, redis_client

__all__ = ["KEY_NAME", "Privacy"]

log = logging.getLogger("fleetgate")

#: Where a fleet without a configured key keeps the one its pods share.
KEY_NAME = "fg:privacy:key"
#: Each kind's pseudonyms start with its letter, so a name says what it stands for.
_PREFIX = {"user": "u_", "team": "t_", "feature": "f_"}
_DIGEST_BYTES = 10  # 80 bits: no collision to fear below ~10^12 distinct values
_MEMO = 65_536  # user ids are unbounded; a pseudonym is cheap to make again
#: A configured key shorter than this is refused: it could be guessed.
MIN_KEY_CHARS = 16


class Privacy:
    """Pseudonyms of one key, for the kinds of scope value that are sensitive."""

    __slots__ = ("_listeners", "_state", "_stop", "sensitive", "source")

    #: How often a pod that started without the fleet's key asks Redis for it again.
    retry_seconds = 2.0

    def __init__(self, key: str | bytes, sensitive: Iterable[str] = (), *, source: str = "configured") -> None:
        """`key`: the secret (at least 16 characters); `sensitive`: the kinds hashed
        besides ``user``; `source`: where the key came from, as ``repr`` says."""
        raw = key.encode() if isinstance(key, str) else key
        if len(raw) < MIN_KEY_CHARS:
            raise ConfigError(f"[privacy] key must be at least {MIN_KEY_CHARS} characters, the same on every pod: "
                              "set it (or FLEETGATE_PRIVACY__KEY) to a random one, such as the output of "
                              "python -c 'import secrets; print(secrets.token_hex(32))'")
        unknown = set(sensitive) - set(_PREFIX)
        if unknown:
            raise ConfigError(f"[privacy] sensitive names {', '.join(sorted(unknown))}: choose among "
                              f"{', '.join(_PREFIX)}")
        self.sensitive = frozenset({"user", *sensitive})
        self.source = source
        #: The key and the pseudonyms made with it, replaced together (never one without the
        #: other, so no pseudonym of an old key is remembered under a new one).
        self._state: tuple[bytes, dict[tuple[str, str], str]] = (_derived(raw), {})
        self._listeners: list[Callable[[], None]] = []
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Privacy(sensitive={sorted(self.sensitive)}, key={self.source})"

    @classmethod
    def process_local(cls, sensitive: Iterable[str] = ()) -> Privacy:
        """A random key for this process alone (embedded, or a store that did not answer)."""
        return cls(secrets.token_bytes(32), sensitive, source="random, this process")

    @classmethod
    def from_settings(cls, settings: PrivacySettings, redis_url: str | None) -> Privacy:
        """The pseudonyms ``[privacy]`` asks for, with the key it sets, else the fleet's in
        Redis at `redis_url` (created by the first pod to ask), else one for the process."""
        if settings.key is not None:
            return cls(settings.key.get_secret_value(), settings.sensitive)
        if redis_url is None:
            return cls.process_local(settings.sensitive)
        import redis  # noqa: PLC0415 - only with a store, as redis_clients does

        try:
            shared = _fleet_key(redis_url)
        except redis.RedisError as e:
            log.warning("fleetgate: the fleet's privacy key could not be read from Redis at %s (%s: %s); this pod "
                        "hashes user ids with a key of its own until it can (asked again every %gs), so until then "
                        "its quota and budget names and records do not match the fleet's; [privacy] key "
                        "(FLEETGATE_PRIVACY__KEY), the same on every pod, needs no Redis",
                        redacted_url(redis_url), type(e).__name__, e, cls.retry_seconds)
            privacy = cls.process_local(settings.sensitive)
            threading.Thread(target=privacy._wait_for_fleet_key, args=(redis_url,), daemon=True,
                             name="fleetgate-privacy-key").start()
            return privacy
        return cls(shared, settings.sensitive, source=_SHARED)

    def on_rekey(self, listener: Callable[[], None]) -> None:
        """Call `listener()` when the key changes (a pod that started without the fleet's key
        has read it): names made from pseudonyms and remembered must be made again."""
        self._listeners.append(listener)

    def close(self) -> None:
        """Stop asking Redis for the fleet's key (a gateway closing)."""
        self._stop.set()

    def _wait_for_fleet_key(self, redis_url: str) -> None:
        import redis  # noqa: PLC0415

        while not self._stop.wait(self.retry_seconds):
            try:
                shared = _fleet_key(redis_url)
            except redis.RedisError:
                continue  # said once, at start
            except ConfigError as e:
                log.error("fleetgate: %s; this pod keeps hashing user ids with a key of its own", e)
                return
            self._state = (_derived(shared), {})
            self.source = _SHARED
            log.warning("fleetgate: read the fleet's privacy key from Redis at %s: this pod's quota and budget "
                        "names and records match the fleet's from now on", redacted_url(redis_url))
            for listener in list(self._listeners):
                listener()
            return

    def pseudonym(self, kind: str, value: str) -> str:
        """`value`'s pseudonym as a `kind` (``user``, ``team`` or ``feature``): ``u_`` and
        20 hex digits for a user."""
        key, memo = self._state
        memo_key = (kind, value)
        found = memo.get(memo_key)
        if found is None:
            digest = hashlib.blake2b(value.encode(), key=key, digest_size=_DIGEST_BYTES,
                                     person=kind.encode()[:16]).hexdigest()
            found = _PREFIX.get(kind, "x_") + digest
            if len(memo) >= _MEMO:
                memo.clear()
            memo[memo_key] = found
        return found

    def label(self, kind: str, value: str | None) -> str | None:
        """What may leave the process for `value` of `kind`: its pseudonym when the kind is
        sensitive (``user`` always is), else itself."""
        if value is None or kind not in self.sensitive:
            return value
        return self.pseudonym(kind, value)


_SHARED = f"shared in Redis at {KEY_NAME}"


def _derived(secret: bytes) -> bytes:
    """The BLAKE2b key of `secret` (which takes at most 64 bytes: any secret is brought to 32)."""
    return hashlib.blake2b(secret, digest_size=32, person=b"fleetgate-key").digest()


def _fleet_key(redis_url: str) -> bytes:
    """The fleet's key in Redis, stored there first by whichever pod asks first. Raises
    redis.RedisError while Redis does not answer."""
    client = redis_client(redis_url)
    try:
        client.set(KEY_NAME, secrets.token_hex(32), nx=True)
        shared = client.get(KEY_NAME)
    finally:
        client.close()
    if not isinstance(shared, bytes):
        raise ConfigError(f"Redis at {redacted_url(redis_url)} holds no privacy key at {KEY_NAME} right after "
                          "storing one (is it a read-only replica?): point redis_url at a primary, or set "
                          "[privacy] key (FLEETGATE_PRIVACY__KEY)")
    return shared

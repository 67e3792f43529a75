"""The operator's mode (``fg:mode``) and what every pod says of its own (``fg:mode:pods``), in
Redis."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, cast

from fleetgate.errors import StoreUnavailable
from fleetgate.modes.states import ModeState, mode_level, operator_mode
from fleetgate.redis_clients import redacted_url, redis_client

__all__ = ["ModeStore", "PodMode"]

log = logging.getLogger("fleetgate")

_OPERATOR_KEY = "fg:mode"
_PODS_KEY = "fg:mode:pods"
#: A pod that has not said its mode for this long is left out of ``fleetgate mode show``.
_POD_STALE_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class PodMode:
    """What one pod said of its mode (``fleetgate mode show``)."""

    pod: str
    mode: str
    source: str
    reason: str
    #: Seconds since it said so.
    age: float
    #: What its own signals judge (the fleet's automatic mode is what a quorum of pods judge).
    own: str = "full"


class ModeStore:
    """The operator's mode and every pod's, in Redis. Not on the request path: pods read it
    from their judging thread, and the CLI through it."""

    def __init__(self, redis_url: str) -> None:
        self.url = redis_url
        self._client: Any = None

    @property
    def redis(self) -> Any:
        """The redis-py client, made at first use (a cluster client connects as it is made,
        and a gateway starts while Redis is down)."""
        if self._client is None:
            self._client = redis_client(self.url, timeout=2.0)
        return self._client

    def set(self, mode: str, for_seconds: float | None = None, reason: str = "", by: str = "") -> ModeState:
        """Set the fleet's mode (until `for_seconds` pass, or until cleared)."""
        state = operator_mode(mode, for_seconds, reason or f"set by {by or 'an operator'}")
        value = json.dumps(asdict(state))
        try:
            if for_seconds is None:
                self.redis.set(_OPERATOR_KEY, value)
            else:
                self.redis.set(_OPERATOR_KEY, value, px=max(1, int(for_seconds * 1000)))
        except Exception as e:  # redis-py's errors: one seam
            raise _unavailable(self.url, e) from e
        return state

    def clear(self) -> bool:
        """Hand the mode back to the pods' own judgement; False when none was set."""
        try:
            return bool(self.redis.delete(_OPERATOR_KEY))
        except Exception as e:
            raise _unavailable(self.url, e) from e

    def read(self) -> ModeState | None:
        """The operator's mode, or None."""
        try:
            raw = self.redis.get(_OPERATOR_KEY)
        except Exception as e:
            raise _unavailable(self.url, e) from e
        return _parse(raw)

    def exchange(self, pod: str, state: ModeState, own: str) -> tuple[ModeState | None, list[PodMode]]:
        """Say this pod's mode (and `own`: what its signals alone judge), and read the
        operator's mode and every live pod's, in one round trip."""
        said = json.dumps({"mode": state.mode, "source": state.source, "reason": state.reason, "own": own,
                           "at": time.time()})
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(_OPERATOR_KEY)
            pipe.hset(_PODS_KEY, pod, said)
            pipe.expire(_PODS_KEY, 86_400)  # a fleet gone for a day leaves nothing behind
            pipe.hgetall(_PODS_KEY)
            raw, _, _, found = pipe.execute()
        except Exception as e:
            raise _unavailable(self.url, e) from e
        return _parse(raw), self._live(found)

    def leave(self, pod: str) -> None:
        """Take a closing pod out of the record."""
        try:
            self.redis.hdel(_PODS_KEY, pod)
        except Exception as e:
            raise _unavailable(self.url, e) from e

    def pods(self) -> list[PodMode]:
        """Every live pod's mode; pods silent for long are dropped from the record."""
        try:
            return self._live(self.redis.hgetall(_PODS_KEY), prune=True)
        except StoreUnavailable:
            raise
        except Exception as e:
            raise _unavailable(self.url, e) from e

    def _live(self, found: Any, prune: bool = False) -> list[PodMode]:
        now, live, stale = time.time(), [], []
        for pod, raw in cast(dict[bytes, bytes], found).items():
            try:
                said = json.loads(raw)
                age = now - float(said["at"])
                entry = PodMode(pod.decode(), str(said["mode"]), str(said["source"]), str(said["reason"]), age,
                                str(said.get("own", said["mode"])))
            except (ValueError, KeyError, TypeError):
                stale.append(pod)
                continue
            if age > _POD_STALE_SECONDS:
                stale.append(pod)
            else:
                live.append(entry)
        if stale and prune:
            self.redis.hdel(_PODS_KEY, *stale)
        return sorted(live, key=lambda p: p.pod)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> ModeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(raw: Any) -> ModeState | None:
    if raw is None:
        return None
    try:
        fields = json.loads(raw)
        mode_level(fields["mode"])
        return ModeState(fields["mode"], "operator", str(fields.get("reason", "")), float(fields["since"]),
                         None if fields.get("until") is None else float(fields["until"]))
    except (ValueError, KeyError, TypeError):
        log.error("fleetgate: the operator's mode in Redis (%s) is unreadable: ignored; "
                  "`fleetgate mode set` or `fleetgate mode clear` replaces it", _OPERATOR_KEY)
        return None


def _unavailable(url: str, error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"the modes' Redis at {redacted_url(url)} is unavailable ({error})")

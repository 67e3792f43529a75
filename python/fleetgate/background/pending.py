"""The fleet's record of background calls not yet settled, kept in Redis where another pod
can finish them (a pod that dies leaves its calls to the others). Embedded there is no
record: the watcher's own table is all there is (its budgets live and die with the process).

Each pending call is claimed by one pod at a time, for ``[background] claim_seconds``
renewed while the pod watches it; a claim that lapses (its pod died, or closed and handed
its calls back) is taken by the next pod that looks. Only the pod holding a call's claim
may finish it: settled once, by one pod.

    fg:{background}:calls    hash    response id → the call's record (JSON)
    fg:{background}:claims   zset    response id → when its claim lapses (server ms)
    fg:{background}:owners   hash    response id → the pod holding the claim
    fg:{background}:due      set     response ids a webhook says ended, for their owner

The keys share one hash tag: one slot on a cluster, every script atomic. Times are the
Redis server's (``TIME``), so pods' clocks never matter.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["PendingCall", "RedisPending"]


@dataclass(frozen=True)
class PendingCall:
    """What another pod needs to finish a background call: where to poll it (the create
    request's URL and project; never its API key), what it may cost at most, and which
    budgets and labels its spend goes to (users by pseudonym only)."""

    response_id: str
    #: The URL the call was created at (``…/v1/responses``), without credentials.
    url: str
    model: str
    #: Unix seconds when the call was made: its spend goes to that day's period.
    made_at: float
    #: Unix seconds after which it is settled at its worst case, polled or not.
    ends_by: float
    prompt_tokens: int
    max_output_tokens: int
    #: What the budget hold holds: the most the call may cost.
    worst: float
    project: str | None = None
    organization: str | None = None
    #: The service tier the call asked for (None: the default).
    tier: str | None = None
    #: ``[name, limit, period]`` of each budget it is held on.
    budgets: list[tuple[str, float, str]] = field(default_factory=list)
    #: Whether spend is recorded (a budget holds it, or ``record_spend``).
    recorded: bool = False
    feature: str = ""
    user: str = ""
    team: str = ""
    #: The deployment it was made at (``model@name``; "": the gateway's one upstream): a
    #: pod taking it over polls with that deployment's key, never written here.
    deployment: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> PendingCall:
        data = json.loads(text)
        data["budgets"] = [tuple(b) for b in data.get("budgets") or []]
        return cls(**data)


_PREFIX = "fg:{background}:"
_KEYS = [f"{_PREFIX}calls", f"{_PREFIX}claims", f"{_PREFIX}owners", f"{_PREFIX}due"]

#: KEYS as _KEYS; ARGV [1] id [2] record [3] owner [4] claim (ms).
_ADD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
return 1
"""
#: ARGV [1] owner [2] claim (ms) [3..] ids. Returns the ids the owner still holds.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local held = {}
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[3], ARGV[i]) == ARGV[1] and redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[i])
    held[#held + 1] = ARGV[i]
  end
end
return held
"""
#: ARGV [1] owner [2] claim (ms) [3] limit. Returns {id, record, id, record, ...} taken.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local taken = {}
for _, id in ipairs(lapsed) do
  local record = redis.call('HGET', KEYS[1], id)
  if record then
    redis.call('HSET', KEYS[3], id, ARGV[1])
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), id)
    taken[#taken + 1] = id
    taken[#taken + 1] = record
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return taken
"""
#: ARGV [1] id [2] owner. Returns 1 when removed.
_FINISH = """
if redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[4], ARGV[1])
return 1
"""
#: ARGV [1] owner [2..] ids: their claims lapse now.
_RELEASE = """
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[3], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[2], 0, ARGV[i])
  end
end
return 0
"""
#: ARGV [1] id. Returns 1 when the call is pending (and now marked due).
_MARK_DUE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""
#: ARGV [1..] ids. Returns those marked due, unmarking them.
_DUE = """
local found = {}
for i = 1, #ARGV do
  if redis.call('SREM', KEYS[4], ARGV[i]) == 1 then found[#found + 1] = ARGV[i] end
end
return found
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisPending:
    """Pending calls in Redis (standalone or cluster), shared by every pod; `owner` names
    the pod holding a claim, `claim` is how long it lasts (seconds)."""

    def __init__(self, url: str) -> None:
        from fleetgate.redis_clients import redis_client  # noqa: PLC0415 - redis-py only with Redis

        self._redis: Any = redis_client(url)
        register = self._redis.register_script
        self._add, self._renew, self._take = register(_ADD), register(_RENEW), register(_TAKE)
        self._finish, self._release = register(_FINISH), register(_RELEASE)
        self._mark_due, self._due = register(_MARK_DUE), register(_DUE)

    def add(self, call: PendingCall, owner: str, claim: float) -> None:
        """Record `call`, claimed by `owner` for `claim` seconds."""
        self._add(keys=_KEYS, args=[call.response_id, call.to_json(), owner, _ms(claim)])

    def renew(self, ids: list[str], owner: str, claim: float) -> list[str]:
        """Renew `owner`'s claim on each of `ids`; the ids it still holds."""
        if not ids:
            return []
        return [_text(i) for i in self._renew(keys=_KEYS, args=[owner, _ms(claim), *ids])]

    def take(self, owner: str, claim: float, limit: int) -> list[PendingCall]:
        """Claim up to `limit` calls whose claim lapsed."""
        flat = self._take(keys=_KEYS, args=[owner, _ms(claim), max(1, limit)])
        return [PendingCall.from_json(flat[i + 1]) for i in range(0, len(flat), 2)]

    def finish(self, response_id: str, owner: str) -> bool:
        """Remove the call if `owner` holds its claim; whether it did."""
        return bool(self._finish(keys=_KEYS, args=[response_id, owner]))

    def release(self, ids: list[str], owner: str) -> None:
        """Give `owner`'s claims on `ids` back, for another pod to take at once."""
        if ids:
            self._release(keys=_KEYS, args=[owner, *ids])

    def mark_due(self, response_id: str) -> bool:
        """Say the call ended (a webhook came); whether it is pending."""
        return bool(self._mark_due(keys=_KEYS, args=[response_id]))

    def due(self, ids: list[str]) -> list[str]:
        """Of `ids`, those marked due (unmarked as they are returned)."""
        if not ids:
            return []
        return [_text(i) for i in self._due(keys=_KEYS, args=ids)]

    def count(self) -> int:
        """Pending calls in the whole fleet."""
        return int(self._redis.hlen(_KEYS[0]))

    def close(self) -> None:
        self._redis.close()


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))

"""Canary rollouts: a named configuration takes a growing share of another's traffic,
promoted step by step while its gates hold, rolled back as soon as one is clearly broken.

Assignment is a hash of (rollout, user or conversation) into 10,000 buckets; the canary
has the buckets below its share, so raising a share from 10% to 20% moves only the users
of the new 10%, and every pod assigns alike. The state (step, status, version) and the
figures the gates read (requests, errors, quality signals, cost, a latency histogram;
per side and step) live in Redis for the fleet, or in memory embedded. Each pod adds its
figures and re-reads the state every `sync_seconds` in one background thread, which also
judges the gates; a decision is written with a compare-and-set on the version, so the
fleet takes each decision once. Every decision is logged with the figures behind it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from fleetgate.redis_clients import redacted_url, redis_client
from fleetgate.config import DeploymentSettings, RolloutSettings
from fleetgate.errors import ConfigError, StoreUnavailable
from fleetgate.outage import Outage

__all__ = ["Figures", "Outcome", "RolloutState", "Rollouts", "decide"]

log = logging.getLogger("fleetgate")

Side = Literal["baseline", "canary"]
Status = Literal["running", "paused", "pinned", "promoted", "rolled_back"]

BUCKETS = 10_000
#: Latency histogram: bucket i holds calls up to 1 ms × 1.05^i (p95 read to within 5%).
_RATIO = 1.05
_QUALITY = ("refusals", "truncated", "too_short", "schema_failed")


@dataclass(frozen=True)
class RolloutState:
    step: int = 0
    status: Status = "running"
    version: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    """One answered call, as the gates count it."""

    error: bool
    #: The call's latency less its waits: for quota, a lane, a retry-after or a paused model
    #: (None: it was refused, and its latency says nothing).
    seconds: float | None
    #: What the answer was billed; None when it was not (an error).
    cost: float | None = 0.0
    refusal: bool = False
    truncated: bool = False
    too_short: bool = False
    schema_failed: bool = False
    #: Refused because this side's circuit breaker is open: upstream fails this side.
    circuit_open: bool = False


@dataclass
class Figures:
    """What one side of a rollout did during one step."""

    counts: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return self.counts["requests"]

    def rate(self, name: str) -> float:
        return self.counts[name] / self.requests if self.requests else 0.0

    @property
    def error_rate(self) -> float:
        return self.rate("errors")

    @property
    def quality_rate(self) -> float:
        return sum(self.counts[q] for q in _QUALITY) / self.requests if self.requests else 0.0

    @property
    def cost_per_request(self) -> float:
        """Dollars per billed answer (errors cost nothing and say nothing of the price)."""
        return self.counts["cost_micros"] / 1e6 / self.counts["billed"] if self.counts["billed"] else 0.0

    @property
    def p95_seconds(self) -> float:
        return self.latency_quantile(0.95)

    def latency_quantile(self, q: float) -> float:
        """The latency (seconds, to within 5%) that a share `q` of the calls took at most."""
        buckets = sorted((int(k[1:]), v) for k, v in self.counts.items() if k.startswith("l") and v)
        target, seen = q * sum(v for _, v in buckets), 0
        for i, n in buckets:
            seen += n
            if seen >= target:
                return 0.001 * _RATIO ** i
        return 0.0

    def add(self, outcome: Outcome) -> None:
        c = self.counts
        c["requests"] += 1
        c["errors"] += outcome.error
        if outcome.cost is not None:
            c["billed"] += 1
            c["cost_micros"] += round(outcome.cost * 1e6)
        for q in _QUALITY:
            c[q] += getattr(outcome, q if q != "refusals" else "refusal")
        c["circuit_open"] += outcome.circuit_open
        if outcome.seconds is not None:
            c[f"l{max(0, math.ceil(math.log(max(outcome.seconds, 1e-3) / 0.001, _RATIO)))}"] += 1

    def describe(self) -> str:
        return (f"{self.requests} requests, errors {self.error_rate:.2%}, quality signals {self.quality_rate:.2%}, "
                f"p95 {self.p95_seconds * 1000:.0f} ms, ${self.cost_per_request:.6f}/request")


#: A rate gate (errors, quality signals) rolls back only on counts a canary truly at its
#: bound would show less often than this: a few unlucky errors in a small step are chance.
ROLLBACK_CHANCE = 0.001


def beyond_chance(rate: float, bound: float, requests: int) -> bool:
    """Whether `rate` over `requests` is more than a true rate of `bound` shows by chance:
    the Chernoff bound on that tail, exp(-requests × KL(rate ‖ bound)), is under
    :data:`ROLLBACK_CHANCE` (an over-estimate of the chance, so the test errs toward waiting)."""
    rate = min(rate, 1.0)
    if rate <= bound:
        return False
    if bound <= 0.0:
        return True
    divergence = rate * math.log(rate / bound)
    if rate < 1.0:
        divergence += (1 - rate) * math.log((1 - rate) / (1 - bound))
    return requests * divergence > -math.log(ROLLBACK_CHANCE)


class _Gate(NamedTuple):
    name: str
    value: float  # the canary's
    bound: float
    broken: float  # clearly broken past this (0: never rolls back)
    rate: bool  # a rate of requests (errors, quality signals): rolls back only beyond chance


def decide(rules: RolloutSettings, state: RolloutState, base: Figures,
           canary: Figures) -> tuple[Literal["promote", "rollback"], str] | None:
    """The gates: ("rollback", why) once a bound is clearly broken (after `early_requests`;
    for a rate, also beyond chance), ("promote", why) once all hold (after `min_requests`),
    else None (keep counting)."""
    if state.status != "running":
        return None
    if canary.counts["circuit_open"]:
        # Upstream fails the canary so often that its breaker opened: roll back now, not
        # after the rate gates have counted enough calls (the breaker refuses them).
        return "rollback", (f"the canary's circuit breaker opened ({canary.counts['circuit_open']} calls refused); "
                            f"canary: {canary.describe()}; baseline: {base.describe()}")
    if canary.requests < rules.early_requests:
        return None
    # A baseline with no errors still allows the canary a little: one error in a thousand.
    base_errors = max(base.error_rate, 0.001)
    base_quality = max(base.quality_rate, 0.001)
    gates = [
        _Gate("error rate", canary.error_rate, base_errors * rules.max_error_ratio,
              base_errors * (1 + (rules.max_error_ratio - 1) * rules.clearly) if rules.max_error_ratio > 1 else 0.0,
              rate=True),
        _Gate("quality signals", canary.quality_rate, base_quality * rules.max_error_ratio,
              base_quality * (1 + (rules.max_error_ratio - 1) * rules.clearly), rate=True),
        _Gate("p95 latency", canary.p95_seconds, base.p95_seconds * (1 + rules.max_p95_increase),
              base.p95_seconds * (1 + rules.max_p95_increase * rules.clearly), rate=False),
        _Gate("cost per request", canary.cost_per_request, base.cost_per_request * (1 + rules.max_cost_increase),
              base.cost_per_request * (1 + rules.max_cost_increase * rules.clearly), rate=False),
    ]
    figures = f"canary: {canary.describe()}; baseline: {base.describe()}"
    if base.requests >= rules.early_requests:
        for g in gates:
            if g.broken and g.value > g.broken and (not g.rate or beyond_chance(g.value, g.bound, canary.requests)):
                return "rollback", f"{g.name} clearly over its bound ({g.value:.4g} > {g.broken:.4g}); {figures}"
    if canary.requests < rules.min_requests or base.requests < rules.early_requests:
        return None
    if any(g.value > g.bound for g in gates):
        return None  # not clearly broken: the step waits for more evidence
    return "promote", f"all gates hold; {figures}"


class _Store(Protocol):
    def read(self, name: str) -> RolloutState: ...
    def swap(self, name: str, expected: int, state: RolloutState) -> bool: ...
    def add(self, name: str, side: Side, step: int, counts: Counter[str]) -> None: ...
    def figures(self, name: str, side: Side, step: int) -> Figures: ...


class _MemoryStore:
    def __init__(self) -> None:
        self._states: dict[str, RolloutState] = {}
        self._figures: dict[tuple[str, str, int], Counter[str]] = {}
        self._lock = threading.Lock()

    def read(self, name: str) -> RolloutState:
        with self._lock:
            return self._states.get(name, RolloutState())

    def swap(self, name: str, expected: int, state: RolloutState) -> bool:
        with self._lock:
            if self._states.get(name, RolloutState()).version != expected:
                return False
            self._states[name] = RolloutState(state.step, state.status, expected + 1, state.reason)
            return True

    def add(self, name: str, side: Side, step: int, counts: Counter[str]) -> None:
        with self._lock:
            self._figures.setdefault((name, side, step), Counter()).update(counts)

    def figures(self, name: str, side: Side, step: int) -> Figures:
        with self._lock:
            return Figures(Counter(self._figures.get((name, side, step), Counter())))


_SWAP = """
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', v + 1, 'step', ARGV[2], 'status', ARGV[3], 'reason', ARGV[4])
return 1
"""


class _RedisStore:
    """``fg:{rollout:<name>}:state`` (a hash), ``…:<side>:<step>`` (counters)."""

    def __init__(self, url: str) -> None:
        self._client = redis_client(url)
        self._swap = self._client.register_script(_SWAP)

    @staticmethod
    def _key(name: str, *rest: object) -> str:
        safe = name.replace("{", "(").replace("}", ")")
        return ":".join([f"fg:{{rollout:{safe}}}", *map(str, rest)])

    def read(self, name: str) -> RolloutState:
        found: Any = self._call(self._client.hgetall, self._key(name, "state"))
        if not found:
            return RolloutState()
        get = {k.decode(): v.decode() for k, v in found.items()}
        return RolloutState(int(get["step"]), get["status"], int(get["version"]), get.get("reason", ""))

    def swap(self, name: str, expected: int, state: RolloutState) -> bool:
        return bool(self._call(self._swap, keys=[self._key(name, "state")],
                               args=[expected, state.step, state.status, state.reason]))

    def add(self, name: str, side: Side, step: int, counts: Counter[str]) -> None:
        key = self._key(name, side, step)
        pipe = self._client.pipeline(transaction=False)
        for k, v in counts.items():
            pipe.hincrby(key, k, v)
        pipe.expire(key, 30 * 86_400)
        self._call(pipe.execute)

    def figures(self, name: str, side: Side, step: int) -> Figures:
        found: Any = self._call(self._client.hgetall, self._key(name, side, step))
        return Figures(Counter({k.decode(): int(v) for k, v in found.items()}))

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        import redis  # loaded already by the client `fn` belongs to; a gateway without Redis never imports it

        try:
            return fn(*args, **kwargs)
        except redis.RedisError as e:
            raise StoreUnavailable(f"the rollouts' Redis is unavailable ({e}); check that Redis is "
                                   "reachable at redis_url") from e


class Rollouts:
    """Every rollout of a gateway: assignment on the request path (no I/O), figures and
    decisions in a background thread."""

    def __init__(self, rollouts: dict[str, RolloutSettings], redis_url: str | None, *,
                 sync_seconds: float = 0.5, judge: bool = True) -> None:
        """`judge`: decide promotions and rollbacks (a pod); False only reads and steers
        (an operator's command), with no background thread."""
        for name, rules in rollouts.items():
            if any(not 0 < s <= 1 for s in rules.steps) or rules.steps != sorted(rules.steps) or rules.steps[-1] != 1:
                raise ConfigError(f"rollout {name!r}: steps rise from above 0 to 1.0 (got {rules.steps})")
            if "/" in name:
                raise ConfigError(f"rollout {name!r}: a name has no '/' (answers name it in x-fleetgate-deployment)")
            if rules.feature is None and rules.model is None:
                raise ConfigError(f"rollout {name!r}: say which requests take part: feature = … or model = …")
        self.rules = rollouts
        self._store: _Store = _RedisStore(redis_url) if redis_url else _MemoryStore()
        self._outage = Outage(f"the rollouts' Redis at {redacted_url(redis_url)}" if redis_url
                              else "the rollouts' store")
        self._states = {name: self._store.read(name) for name in rollouts}
        self._pending: dict[tuple[str, Side, int], Counter[str]] = {}
        self._lock = threading.Lock()
        self._sync_seconds = sync_seconds
        self._judge = judge
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if rollouts and judge:
            self._thread = threading.Thread(target=self._run, name="fleetgate-rollouts", daemon=True)
            self._thread.start()

    # -- the request path --------------------------------------------------------------------

    def pick(self, feature: str | None, model: str, user: str | None,
             body: dict[str, Any]) -> tuple[str, Side, int, DeploymentSettings] | None:
        """(rollout, side, step, configuration) for a request, or None when none applies.
        Whom it belongs to (its sticky key) is worked out only once a rollout applies."""
        for name, rules in self.rules.items():
            if (rules.feature is not None and rules.feature != feature) or (rules.model is not None
                                                                           and rules.model != model):
                continue
            sticky = sticky_key(rules.sticky_by, user, body)
            state = self._states[name]
            share = self.share(name, state)
            digest = hashlib.blake2b(f"{name}\0{sticky}".encode(), digest_size=8).digest()
            canary = int.from_bytes(digest, "big") % BUCKETS < round(share * BUCKETS)
            side: Side = "canary" if canary else "baseline"
            return name, side, state.step, rules.canary if canary else rules.baseline
        return None

    def share(self, name: str, state: RolloutState | None = None) -> float:
        """The canary's share of the rollout's traffic now."""
        state = state or self._states[name]
        if state.status == "rolled_back":
            return 0.0
        if state.status == "promoted":
            return 1.0
        steps = self.rules[name].steps
        return steps[min(state.step, len(steps) - 1)]

    def record(self, name: str, side: Side, step: int, outcome: Outcome) -> None:
        """Count an answered call (sent to the store with the next sync)."""
        figures = Figures()
        figures.add(outcome)
        with self._lock:
            self._pending.setdefault((name, side, step), Counter()).update(figures.counts)

    def note(self, name: str, side: Side, signal: str) -> None:
        """Count a quality signal learnt after the answer (``schema_failed``: it did not
        validate), against the rollout's current step."""
        if name not in self.rules or side not in ("baseline", "canary") or signal not in _QUALITY:
            return
        with self._lock:
            self._pending.setdefault((name, side, self._states[name].step), Counter())[signal] += 1

    # -- people ------------------------------------------------------------------------------

    def state(self, name: str) -> RolloutState:
        self._known(name)
        self._states[name] = self._store.read(name)
        return self._states[name]

    def pause(self, name: str) -> RolloutState:
        """Hold the share where it is; no automatic decision until `resume`."""
        return self._set(name, lambda s: RolloutState(s.step, "paused", reason="paused by hand"))

    def pin(self, name: str, step: int) -> RolloutState:
        """Put the canary at `step` (an index of `steps`) and hold it there."""
        if not 0 <= step < len(self.rules[name].steps):
            raise ConfigError(f"rollout {name!r} has steps 0 to {len(self.rules[name].steps) - 1}, not {step}")
        return self._set(name, lambda s: RolloutState(step, "pinned", reason=f"pinned at step {step} by hand"))

    def resume(self, name: str) -> RolloutState:
        return self._set(name, lambda s: RolloutState(s.step, "running", reason="resumed by hand"))

    def force(self, name: str, decision: Literal["promote", "rollback"]) -> RolloutState:
        """Promote to 100% or roll back to 0% now, whatever the gates say."""
        status: Status = "promoted" if decision == "promote" else "rolled_back"
        steps = len(self.rules[name].steps)
        return self._set(name, lambda s: RolloutState(steps - 1 if decision == "promote" else s.step, status,
                                                       reason=f"{decision} forced by hand"))

    def figures(self, name: str, side: Side, step: int | None = None) -> Figures:
        self._known(name)
        return self._store.figures(name, side, self._states[name].step if step is None else step)

    def sync(self) -> None:
        """Send this pod's figures, re-read every state, and judge the gates (the background
        thread does this every `sync_seconds`; call it to do it now)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for (name, side, step), counts in pending.items():
            self._store.add(name, side, step, counts)
        for name, rules in self.rules.items():
            state = self._states[name] = self._store.read(name)
            if not self._judge:
                continue
            verdict = decide(rules, state, self._store.figures(name, "baseline", state.step),
                             self._store.figures(name, "canary", state.step))
            if verdict is None:
                continue
            action, why = verdict
            if action == "rollback":
                new = RolloutState(state.step, "rolled_back", reason=why)
            elif state.step + 2 >= len(rules.steps):  # the last step (100%) leaves no baseline to judge by
                new = RolloutState(len(rules.steps) - 1, "promoted", reason=why)
            else:
                new = RolloutState(state.step + 1, "running", reason=why)
            if self._store.swap(name, state.version, new):
                level = logging.WARNING if action == "rollback" else logging.INFO
                log.log(level, "fleetgate: rollout %s (canary %s): %s from %.0f%% to %.0f%%: %s", name,
                        rules.canary.version, "rolled back" if action == "rollback" else "promoted",
                        self.share(name, state) * 100, self.share(name, new) * 100, why)
                self._states[name] = self._store.read(name)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.sync()
        except StoreUnavailable as e:
            log.warning("fleetgate: %s; this pod's last rollout figures were not sent", e)

    # -- inside ------------------------------------------------------------------------------

    def _known(self, name: str) -> None:
        if name not in self.rules:
            raise ConfigError(f"no rollout {name!r}: add [routing.rollouts.{name}] to the gateway's config "
                              f"(known: {', '.join(sorted(self.rules)) or 'none'})")

    def _set(self, name: str, change: Any) -> RolloutState:
        self._known(name)
        while True:
            state = self._store.read(name)
            new = change(state)
            if self._store.swap(name, state.version, new):
                log.warning("fleetgate: rollout %s: %s (canary at %.0f%%)", name, new.reason,
                            self.share(name, new) * 100)
                self._states[name] = self._store.read(name)
                return self._states[name]

    def _run(self) -> None:
        """Sync every `sync_seconds`; an outage of the store is said once when it starts and
        once when it ends."""
        while not self._stop.wait(self._sync_seconds):
            try:
                self.sync()
            except StoreUnavailable as e:
                self._outage.failed(e.__cause__ or e, "rollouts keep their last state until it is back")
            else:
                self._outage.answered("rollouts are synced again")


def sticky_key(by: str, user: str | None, body: dict[str, Any]) -> str:
    """Whom a request belongs to for assignment: the user, else the conversation."""
    if by == "user" and user:
        return f"user:{user}"
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("conversation_id"), str):
        return f"conversation:{metadata['conversation_id']}"
    first = next((m.get("content") for m in body.get("messages", []) if isinstance(m, dict)
                  and m.get("role") == "user"), body.get("input"))
    return f"first:{hashlib.blake2b(repr(first).encode(), digest_size=12).hexdigest()}"

"""Type stubs for the Rust extension ``fleetgate._core``."""

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, final

__all__ = [
    "__version__", "Breaker", "Breakers", "FleetFlights", "Flight", "Flights", "Lanes", "Slot", "Quota", "Limiter", "Decision", "Reservation", "Completions", "Submission", "parse_duration", "health",
    "count_tokens", "chat_prompt_tokens", "encoding_for_model", "truncate_tokens",
    "Budget", "BudgetReservation", "BudgetStatus", "Ledger", "Splitter",
]
__version__: str

_Algorithm = Literal["token_bucket", "sliding_window"]
_FailurePolicy = Literal["fail_open", "fail_closed"]
_Quotas = Quota | Sequence[Quota]
_Headers = Mapping[str, str]

def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration as OpenAI sends it ("20ms", "6m0s", "1h2m3.5s")."""

def health(status: int | None, code: str | None = None) -> Literal["success", "failure", "rate_limited",
                                                                   "quota_exhausted", "neutral"]:
    """The one health verdict of an upstream outcome (status None: no answer came), as the
    breakers, the modes and the rollouts count it."""

def count_tokens(model: str, text: str) -> int:
    """Tokens in `text` under `model`'s encoding (o200k_base or cl100k_base), offline."""

def chat_prompt_tokens(model: str, messages: list[str]) -> int:
    """Tokens of a chat prompt: each message's text plus the chat format's overhead."""

def encoding_for_model(model: str) -> Literal["o200k_base", "cl100k_base"]:
    """The encoding OpenAI uses for `model`; unknown models get o200k_base."""

def truncate_tokens(text: str, max_tokens: int, model: str) -> tuple[str, bool]:
    """`text` cut to its first `max_tokens` tokens under `model`'s encoding (never inside a
    character), and whether anything was cut."""

@final
class Quota:
    """A named requests-per-minute and/or tokens-per-minute limit.

    Token buckets refill at limit/60 per second up to a burst of ``burst_seconds`` of the
    rate (default one second's share, as OpenAI slices its limits), or an explicit
    ``request_burst`` / ``token_burst``. Sliding windows admit at most the limit in any
    60 seconds. _Quotas with the same name share state.
    """

    def __new__(
        cls,
        name: str,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        *,
        algorithm: _Algorithm = "token_bucket",
        burst_seconds: float = 1.0,
        request_burst: int | None = None,
        token_burst: int | None = None,
    ) -> Quota: ...
    @property
    def name(self) -> str: ...
    @property
    def requests_per_minute(self) -> int | None: ...
    @property
    def tokens_per_minute(self) -> int | None: ...
    @property
    def request_capacity(self) -> int | None: ...
    @property
    def token_capacity(self) -> int | None: ...
    @property
    def algorithm(self) -> _Algorithm: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class Reservation:
    """What an admission reserved; settle it once with the real token usage."""

    @property
    def requests(self) -> int: ...
    @property
    def tokens(self) -> int: ...
    @property
    def quotas(self) -> list[str]: ...
    @property
    def source(self) -> Literal["local", "redis", "lease", "fallback"]: ...
    @property
    def settled(self) -> bool: ...

@final
class Decision:
    """A limiter's answer. Truthy when allowed."""

    @property
    def allowed(self) -> bool: ...
    @property
    def retry_after(self) -> float: ...
    @property
    def remaining_requests(self) -> int | None: ...
    @property
    def remaining_tokens(self) -> int | None: ...
    @property
    def limited_by(self) -> str | None: ...
    @property
    def source(self) -> Literal["local", "redis", "lease", "fallback"]: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def reservation(self) -> Reservation | None: ...
    def __bool__(self) -> bool: ...

@final
class Limiter:
    """Admits requests against quotas, in process (``store=None``) or across every
    process that shares a Redis (``redis://``, ``rediss://``, ``redis+cluster://h:p,h:p``).

    While Redis is unreachable, ``failure_policy="fail_open"`` decides on this pod's
    ``local_share`` of each quota; ``"fail_closed"`` raises :class:`StoreUnavailable`.

    ``lease_seconds > 0`` (with Redis): a busy token-bucket quota is admitted from a small
    lease this process holds, covering about that many seconds of its own demand, so most
    decisions need no round trip (their ``source`` is ``"lease"``); a lease is at most a
    tenth of the quota's burst and a quarter of the room left, so a quota near its limit is
    still decided request by request.
    """

    def __new__(
        cls,
        store: str | None = None,
        *,
        failure_policy: _FailurePolicy = "fail_open",
        local_share: float = 0.1,
        timeout: float = 0.25,
        connect_timeout: float = 0.5,
        recheck_after: float = 0.5,
        lease_seconds: float = 0.0,
    ) -> Limiter: ...
    @property
    def store(self) -> str | None: ...
    @property
    def failure_policy(self) -> _FailurePolicy: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def store_errors(self) -> int: ...
    @property
    def lease_counts(self) -> tuple[int, int]:
        """``(leases granted, decisions served from a lease)``."""
    def leased(self, quota: Quota) -> tuple[int, int]:
        """``(requests, tokens)`` of `quota`'s room this process holds in its lease."""
    def try_acquire(self, quotas: _Quotas, requests: int = 1, tokens: int = 0) -> Decision: ...
    async def try_acquire_async(self, quotas: _Quotas, requests: int = 1, tokens: int = 0) -> Decision: ...
    def acquire(self, quotas: _Quotas, requests: int = 1, tokens: int = 0, timeout: float | None = None) -> Decision: ...
    async def acquire_async(
        self, quotas: _Quotas, requests: int = 1, tokens: int = 0, timeout: float | None = None
    ) -> Decision: ...
    def settle(self, reservation: Reservation, tokens: int) -> None: ...
    async def settle_async(self, reservation: Reservation, tokens: int) -> None: ...
    def settle_later(self, reservation: Reservation, tokens: int) -> None:
        """Settle without waiting (in the background for a shared store)."""
    def sync_from_headers_later(self, quota: Quota, headers: _Headers) -> None:
        """sync_from_headers without waiting (in the background for a shared store)."""
    def sync_from_headers(self, quota: Quota, headers: _Headers) -> None: ...
    async def sync_from_headers_async(self, quota: Quota, headers: _Headers) -> None: ...
    def ping(self) -> None: ...
    async def ping_async(self) -> None: ...

_BreakerState = Literal["closed", "open", "half_open", "isolated"]
_OnTransition = Callable[[str, _BreakerState, _BreakerState, str, bool, float | None], object]

@final
class Breaker:
    """One circuit breaker; see :class:`Breakers`."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> _BreakerState: ...
    @property
    def trips(self) -> int: ...
    def allow(self) -> int:
        """A permit for one call; raises :class:`CircuitOpen` when refused."""
    def record(self, permit: int, status: int | None, code: str | None = None, elapsed: float = 0.0,
               retry_after: float = 0.0) -> None: ...
    def release(self, permit: int) -> None: ...
    def isolate(self) -> None: ...
    def reset(self) -> None: ...

@final
class Breakers:
    """Circuit breakers by name, created closed on first use; shared with the fleet when
    ``limiter`` is on Redis. ``on_transition(name, from, to, reason, remote, lasts)``."""

    def __new__(
        cls,
        limiter: Limiter | None = None,
        *,
        window: int = 50,
        window_seconds: int | None = None,
        failure_rate: float = 0.5,
        slow_rate: float = 1.0,
        slow_call: float = 30.0,
        min_calls: int = 10,
        half_open_probes: int = 3,
        probe_max_wait: float = 30.0,
        open_base: float = 5.0,
        open_max: float = 300.0,
        jitter: float = 0.2,
        share_every: float = 0.25,
        on_transition: _OnTransition | None = None,
    ) -> Breakers: ...
    def get(self, name: str) -> Breaker: ...
    def states(self) -> dict[str, _BreakerState]: ...
    @property
    def shared(self) -> bool: ...
    def sync_now(self) -> int: ...

_FlightEnd = tuple[Literal["complete", "failed", "cancelled"], str, str]

@final
class Flight:
    """One upstream call shared by identical requests in flight."""

    @property
    def key(self) -> str: ...
    @property
    def waiters(self) -> int: ...
    @property
    def finished(self) -> bool: ...
    def publish_head(self, status: int, headers: list[tuple[str, str]]) -> None: ...
    def publish_chunk(self, chunk: bytes) -> None: ...
    def finish(self, failure: tuple[str, str] | None = None, cancelled: bool = False) -> None: ...
    def end(self) -> _FlightEnd | None: ...
    def wait_head(self, timeout: float | None = None) -> tuple[int, list[tuple[str, str]]] | None: ...
    async def wait_head_async(self) -> tuple[int, list[tuple[str, str]]] | None: ...
    def next_chunks(self, start: int, timeout: float | None = None) -> tuple[list[bytes], _FlightEnd | None]: ...
    async def next_chunks_async(self, start: int) -> tuple[list[bytes], _FlightEnd | None]: ...
    def leave(self) -> bool: ...

@final
class Flights:
    """The flights in progress, by request key."""

    def __new__(cls) -> Flights: ...
    def join(self, endpoint: str, namespace: str, body: bytes) -> tuple[Flight, bool]: ...
    @staticmethod
    def key(endpoint: str, namespace: str, body: bytes) -> str: ...
    @property
    def in_flight(self) -> int: ...

@final
class FleetFlights:
    """Deduplication across the pods sharing ``limiter``'s Redis."""

    def __new__(cls, limiter: Limiter) -> FleetFlights: ...
    def claim(self, key: str, lease: float) -> bool: ...
    async def claim_async(self, key: str, lease: float) -> bool: ...
    def wait(self, key: str, timeout: float, poll: float = 0.02) -> tuple[int, str, bytes] | None: ...
    async def wait_async(self, key: str, timeout: float, poll: float = 0.02) -> tuple[int, str, bytes] | None: ...
    def publish_later(self, key: str, status: int, headers: str, body: bytes, keep: float = 10.0) -> None: ...
    def release_later(self, key: str) -> None: ...

_BudgetPeriod = Literal["day", "month"]
#: ``(budget, threshold, spent, limit, period)``
_Alert = tuple[str, float, float, float, str]
_OnAlert = Callable[[str, float, float, float, str], object]

@final
class Budget:
    """At most ``limit`` dollars per day or month, in an IANA ``timezone``; alerts fire when
    spending first reaches each of ``alerts`` (shares of the limit) in a period. Raises
    :class:`ConfigError` on bad input. Budgets with the same name share their spending."""

    def __new__(
        cls,
        name: str,
        limit: float,
        period: _BudgetPeriod = "day",
        timezone: str = "UTC",
        alerts: Sequence[float] = (0.5, 0.75, 0.9, 1.0),
    ) -> Budget: ...
    @property
    def name(self) -> str: ...
    @property
    def limit(self) -> float: ...
    @property
    def period(self) -> _BudgetPeriod: ...
    @property
    def timezone(self) -> str: ...
    @property
    def alerts(self) -> tuple[float, ...]: ...
    def window(self, now: float | None = None) -> tuple[str, float, float]:
        """The period containing `now` (Unix seconds; default: the current time):
        ``(period id, starts_at, resets_at)``, the id "YYYY-MM-DD" or "YYYY-MM"."""

@final
class BudgetReservation:
    """What a ledger holds for one call; settle or release it once, with that ledger."""

    @property
    def dollars(self) -> float: ...
    @property
    def budgets(self) -> tuple[str, ...]: ...
    @property
    def period(self) -> tuple[str, ...]:
        """The id of each budget's period it was made in."""

@final
class BudgetStatus:
    """Where a budget stands in a period, in dollars."""

    @property
    def period(self) -> str: ...
    @property
    def spent(self) -> float: ...
    @property
    def reserved(self) -> float: ...
    @property
    def limit(self) -> float: ...
    @property
    def resets_at(self) -> float: ...

@final
class Ledger:
    """Dollar budgets, in this process (no limiter, or an embedded one) or shared by every
    pod on ``limiter``'s Redis. ``on_alert(budget, threshold, spent, limit, period)`` is
    called for every alert, from whichever thread settles (its errors go to
    ``sys.unraisablehook``). Spend records are kept by day in ``report_timezone``."""

    def __new__(
        cls,
        limiter: Limiter | None = None,
        *,
        report_timezone: str = "UTC",
        on_alert: _OnAlert | None = None,
    ) -> Ledger: ...
    @property
    def embedded(self) -> bool: ...
    def reserve(
        self,
        budgets: Sequence[Budget],
        dollars: float,
        *,
        lease: float = 600.0,
        now: float | None = None,
        timeout: float | None = None,
    ) -> BudgetReservation:
        """Hold `dollars` on every budget or on none; raises :class:`BudgetExceeded` (naming
        the budget that refused) or :class:`StoreUnavailable`, also when a shared ledger has
        not answered within `timeout` seconds (then a hold made late is given back).
        Unsettled holds lapse after `lease` seconds. With no budgets it holds nothing;
        settling it records the spend."""
    async def reserve_async(
        self,
        budgets: Sequence[Budget],
        dollars: float,
        *,
        lease: float = 600.0,
        now: float | None = None,
        timeout: float | None = None,
    ) -> BudgetReservation: ...
    def settle(
        self,
        reservation: BudgetReservation,
        dollars: float,
        *,
        model: str = "",
        feature: str = "",
        user: str = "",
        team: str = "",
        record: bool = True,
    ) -> list[_Alert]:
        """End the reservation and spend `dollars` on each of its budgets, recorded under
        the labels (`record` false: not recorded, a second hold on a call whose cost another
        settlement records); returns the alerts this crossed (also given to ``on_alert``)."""
    def settle_later(
        self,
        reservation: BudgetReservation,
        dollars: float,
        *,
        model: str = "",
        feature: str = "",
        user: str = "",
        team: str = "",
        record: bool = True,
    ) -> None:
        """settle without waiting (in the background on Redis; a failure is logged on the
        "fleetgate" logger)."""
    def release(self, reservation: BudgetReservation) -> None:
        """Give the reservation back without spending."""
    def release_later(self, reservation: BudgetReservation) -> None:
        """release without waiting (in the background on Redis)."""
    def status(self, budget: Budget, *, now: float | None = None) -> BudgetStatus: ...
    def report(self, days: Sequence[str]) -> list[tuple[str, str, str, str, str, float]]:
        """Spend records of `days` ("YYYY-MM-DD"), as ``(day, model, feature, user, team,
        dollars)``, sorted."""

_LaneName = Literal["realtime", "interactive", "batch"]

@final
class Slot:
    """A held slot of :class:`Lanes`; release it when the upstream call is over."""

    @property
    def lane(self) -> _LaneName: ...
    @property
    def held(self) -> bool: ...
    def release(self) -> None: ...

@final
class Lanes:
    """Priority lanes in front of a model: at most ``concurrency`` slots held; realtime
    (0) strictly first, interactive (1) and batch (2) shared by weight."""

    def __new__(cls, concurrency: int, queue_limit: int = 1000, interactive_weight: int = 4,
                batch_weight: int = 1) -> Lanes: ...
    def enter(self, priority: int, timeout: float | None = None) -> Slot: ...
    async def enter_async(self, priority: int, timeout: float | None = None) -> Slot: ...
    @property
    def in_use(self) -> int: ...
    @property
    def concurrency(self) -> int: ...
    def queued(self, priority: int) -> int: ...
    def stats(self) -> dict[_LaneName, dict[str, int]]: ...

@final
class Completions:
    """Finished async operations of one event loop (used by fleetgate._aio)."""

    def __new__(cls) -> Completions: ...
    def fileno(self) -> int: ...
    def drain(self) -> list[tuple[int, bool, object]]: ...

@final
class Submission:
    """One validated async operation, started by fleetgate._aio on the running loop."""

    def start(self, completions: Completions, id: int) -> None: ...
    def cancel(self) -> None: ...
    def orphaned(self, value: object) -> None: ...


@final
class Splitter:
    """Batch API input lines checked (one endpoint and one model per file, unique
    ``custom_id``), sized in enqueued tokens, and cut into chunks within the limits."""

    def __new__(cls, *, max_lines: int, max_bytes: int, max_tokens: int, model_tokens: Mapping[str, int] | None = None,
                endpoint: str | None = None, default_max_output: int = 4096) -> Splitter:
        """`max_tokens`: enqueued tokens per chunk, or `model_tokens[model]` for the file's
        model (the model of its first sendable line)."""
    def split(self, block: bytes) -> tuple[list[tuple[int, int, int, int, int, int]], list[tuple[int, str]]]:
        """(runs, problems): runs of sendable lines as (chunk, start, end, lines, tokens,
        output tokens), tokens being what they enqueue (prompts plus the most output);
        problems as (line number, reason)."""
    @property
    def endpoint(self) -> str | None: ...
    @property
    def model(self) -> str | None: ...
    @property
    def lines_read(self) -> int: ...

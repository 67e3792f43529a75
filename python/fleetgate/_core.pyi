"""Type stubs for the Rust extension ``fleetgate._core``."""

from collections.abc import Callable, Mapping, Sequence
from typing import Literal, final

__all__ = [
    "__version__", "Breaker", "Breakers", "Lanes", "Slot", "Quota", "Limiter", "Decision", "Reservation", "Completions", "Submission", "parse_duration",
    "count_tokens", "chat_prompt_tokens", "encoding_for_model",
]
__version__: str

_Algorithm = Literal["token_bucket", "sliding_window"]
_FailurePolicy = Literal["fail_open", "fail_closed"]
_Quotas = Quota | Sequence[Quota]
_Headers = Mapping[str, str]

def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration as OpenAI sends it ("20ms", "6m0s", "1h2m3.5s")."""

def count_tokens(model: str, text: str) -> int:
    """Tokens in `text` under `model`'s encoding (o200k_base or cl100k_base), offline."""

def chat_prompt_tokens(model: str, messages: list[str]) -> int:
    """Tokens of a chat prompt: each message's text plus the chat format's overhead."""

def encoding_for_model(model: str) -> Literal["o200k_base", "cl100k_base"]:
    """The encoding OpenAI uses for `model`; unknown models get o200k_base."""

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
    def source(self) -> Literal["local", "redis", "fallback"]: ...
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
    def source(self) -> Literal["local", "redis", "fallback"]: ...
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
    ) -> Limiter: ...
    @property
    def store(self) -> str | None: ...
    @property
    def failure_policy(self) -> _FailurePolicy: ...
    @property
    def degraded(self) -> bool: ...
    @property
    def store_errors(self) -> int: ...
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

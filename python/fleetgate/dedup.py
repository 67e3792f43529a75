"""Collapsing identical in-flight requests: the first makes the upstream call, every
identical request that arrives while it is on gets the same answer (or the same error).

Identical means the same endpoint, the same JSON body (key order and whitespace aside),
the same API key and upstream, and the same scope namespace (``[dedup] namespace``). Which
requests may share an answer is a policy: by default only deterministic ones
(``temperature`` 0, one choice); ``[dedup] when = "always"`` or a scope's ``dedup=True``
widens it, ``dedup=False`` turns it off for a block.

With asyncio the upstream call runs as its own task, so any caller (the first included)
may give up alone; the call is cancelled only when nobody waits any more. Streams fan out
to every caller, and a late joiner gets what was already sent. With threads, the first
caller makes the call itself and streams are not collapsed.
"""

from __future__ import annotations

import asyncio
import threading
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import httpx2

from fleetgate._core import FleetFlights, Flight, Flights, Limiter
from fleetgate.config import DedupSettings
from fleetgate.errors import DeadlineExpired, FleetgateError, StoreUnavailable
from fleetgate.outage import Outage
from fleetgate.redis_clients import redacted_url
from fleetgate.sharing import deterministic, is_read, namespace_of
from fleetgate.scope import Scope

if TYPE_CHECKING:
    from fleetgate.path.call import Call
    from fleetgate.stats import GatewayStats

__all__ = ["DEDUP_HEADER", "Collapser"]

#: Response header: "leader" for the caller whose request made the call, "follower" for
#: the callers that shared it.
DEDUP_HEADER = "x-fleetgate-dedup"

log = logging.getLogger("fleetgate")

#: Headers not handed on to the callers sharing an answer: those describing the bytes on
#: the wire (a follower gets the decoded body) and each caller's own role.
_UNSHARED_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding", DEDUP_HEADER})


class Collapser:
    """The flights of one gateway, and the policy of which requests join them."""

    def __init__(self, settings: DedupSettings, stats: GatewayStats, limiter: Limiter,
                 redis_url: str | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self.fleet = FleetFlights(limiter) if settings.enabled and settings.across_pods else None
        self._outage = Outage(f"deduplication's Redis at {redacted_url(redis_url)}" if redis_url
                              else "deduplication's Redis")
        self.flights = Flights()
        self._leaders: dict[str, asyncio.Task[httpx2.Response | None]] = {}
        self._lock = threading.Lock()

    def namespace(self, call: Call) -> str | None:
        """The namespace this call may share answers in, or None if it must not share."""
        if not self.settings.enabled or call.probe:
            return None
        sc = call.scope
        if sc.dedup is None:
            when = self.settings.when
            if when == "never" or (when == "deterministic" and not deterministic(call.body)):
                return None
        elif not sc.dedup:
            return None
        return namespace_of(self.settings.namespace, call.request, sc)

    def join(self, call: Call, namespace: str) -> tuple[Flight, bool]:
        return self.flights.join(call.endpoint, namespace, _identity(call))

    @staticmethod
    def flight_key(call: Call, namespace: str) -> str:
        """The key of the flight `call` joins in `namespace` (the same on every pod)."""
        return Flights.key(call.endpoint, namespace, _identity(call))

    # -- collapsing ------------------------------------------------------------------------

    async def collapse_async(self, call: Call, answer: Callable[[], Awaitable[httpx2.Response]],
                             refuse: Callable[[FleetgateError], httpx2.Response]) -> httpx2.Response:
        """`answer()` for `call`, made once for every identical call in flight (in this pod,
        and across pods with ``[dedup] across_pods``). The call runs as its own task: any
        caller, the first included, may give up alone."""
        namespace = self.namespace(call)
        if namespace is None:
            return await answer()
        flight, leader = self.join(call, namespace)
        call.shared = "leader" if leader else "follower"
        if leader:
            made = (self.across_pods_async(flight, call, answer, refuse)
                    if self.fleet is not None and not call.stream else answer())
            task = asyncio.get_running_loop().create_task(self.lead(flight, made))
            self.track(flight, task)
        else:
            self.stats.count("dedup_followers")
        return await self.follow(flight, call.request, call.shared, call.stream)

    def collapse(self, call: Call, answer: Callable[[], httpx2.Response],
                 refuse: Callable[[FleetgateError], httpx2.Response]) -> httpx2.Response:
        """`collapse_async` for threads: the first caller makes the call itself, and answers
        read whole are shared (streams go their own way)."""
        namespace = None if call.stream else self.namespace(call)
        if namespace is None:
            return answer()
        flight, leader = self.join(call, namespace)
        if not leader:
            call.shared = "follower"
            self.stats.count("dedup_followers")
            return self.follow_sync(flight, call.request, call.seconds_left())
        call.shared = "leader"
        try:
            response = (self.across_pods(flight, call, answer, refuse) if self.fleet is not None else answer())
        except BaseException as e:
            flight.finish(failure=(type(e).__name__, str(e)))
            self.leave(flight)
            raise
        self.publish(flight, response)
        self.leave(flight)
        response.headers.setdefault(DEDUP_HEADER, "leader")  # "fleet" when another pod answered
        return response

    # -- across pods -----------------------------------------------------------------------

    def across_pods(self, flight: Flight, call: Call, answer: Callable[[], httpx2.Response],
                    refuse: Callable[[FleetgateError], httpx2.Response]) -> httpx2.Response:
        """`answer()` made by this pod, or the answer another pod made for the same request."""
        fleet = self._fleet()
        if self._outage.suspended():
            return answer()
        while True:
            try:
                claimed = fleet.claim(flight.key, _lease(call))
                self._outage.answered()
                if claimed:
                    break
                self.stats.count("dedup_fleet_followers")
                shared = fleet.wait(flight.key, _lease(call, at_least=0.001), self.settings.poll_seconds)
            except (TimeoutError, StoreUnavailable) as e:
                refused = self._unshared(e, refuse)
                return refused if refused is not None else answer()
            if shared is not None:
                call.shared = "fleet"
                return _from_shared(shared, call.request)
        return self._share(fleet, flight.key, call, answer)

    async def across_pods_async(self, flight: Flight, call: Call, answer: Callable[[], Awaitable[httpx2.Response]],
                                refuse: Callable[[FleetgateError], httpx2.Response]) -> httpx2.Response:
        fleet = self._fleet()
        if self._outage.suspended():
            return await answer()
        while True:
            try:
                claimed = await fleet.claim_async(flight.key, _lease(call))
                self._outage.answered()
                if claimed:
                    break
                self.stats.count("dedup_fleet_followers")
                shared = await fleet.wait_async(flight.key, _lease(call, at_least=0.001), self.settings.poll_seconds)
            except (TimeoutError, StoreUnavailable) as e:
                refused = self._unshared(e, refuse)
                return refused if refused is not None else await answer()
            if shared is not None:
                call.shared = "fleet"
                return _from_shared(shared, call.request)
        try:
            response = await answer()
        except BaseException:
            fleet.release_later(flight.key)
            raise
        return self._share(fleet, flight.key, call, lambda: response)

    def _fleet(self) -> FleetFlights:
        if self.fleet is None:
            raise RuntimeError("deduplication across pods is off ([dedup] across_pods)")
        return self.fleet

    def _unshared(self, error: Exception, refuse: Callable[[FleetgateError], httpx2.Response]) -> httpx2.Response | None:
        """The refusal for a caller whose deadline passed while another pod made the call,
        or None when Redis is down and this pod must call alone."""
        if isinstance(error, StoreUnavailable):
            self._outage.failed(error, "each pod makes its own calls until it is back")
            return None
        return refuse(DeadlineExpired("the deadline passed while another pod made this call; give the request a "
                                       "later deadline (scope(deadline=…) or default_deadline_seconds)"))

    def _share(self, fleet: FleetFlights, key: str, call: Call, answer: Callable[[], httpx2.Response]) -> httpx2.Response:
        """Make the claimed call and publish its answer; only upstream's 200s are shared (a
        refusal or a fallback answer is this pod's own state)."""
        try:
            response = answer()
        except BaseException:
            fleet.release_later(key)
            raise
        if response.status_code == 200 and call.tier in ("primary", "fallback_model"):
            fleet.publish_later(key, 200, json.dumps(_decoded_headers(response)), response.content,
                                self.settings.keep_seconds)
        else:
            fleet.release_later(key)
        return response

    # -- asyncio ----------------------------------------------------------------------------

    def track(self, flight: Flight, task: asyncio.Task[httpx2.Response | None]) -> None:
        with self._lock:
            self._leaders[flight.key] = task
        task.add_done_callback(lambda _: self._untrack(flight.key, task))

    def _untrack(self, key: str, task: asyncio.Task[httpx2.Response | None]) -> None:
        with self._lock:
            if self._leaders.get(key) is task:
                del self._leaders[key]

    def leave(self, flight: Flight) -> None:
        """A caller is done with `flight`; the last one of an unfinished flight cancels it."""
        if flight.leave():
            with self._lock:
                task = self._leaders.get(flight.key)
            if task is not None:
                task.get_loop().call_soon_threadsafe(task.cancel)

    async def lead(self, flight: Flight, answer: Any) -> httpx2.Response | None:
        """Run the upstream call (`answer`, a coroutine giving the response) and publish it.
        Returns the response when it was read whole (the leader's caller takes it as it is)."""
        whole = None
        try:
            response: httpx2.Response = await answer
            try:
                if isinstance(response.stream, httpx2.AsyncByteStream) and not is_read(response):
                    flight.publish_head(response.status_code, response.headers.multi_items())
                    async for chunk in response.aiter_raw():
                        flight.publish_chunk(chunk)
                else:
                    flight.publish_head(response.status_code, _decoded_headers(response))
                    flight.publish_chunk(response.content)
                    whole = response
            finally:
                await response.aclose()
        except asyncio.CancelledError:
            flight.finish(cancelled=True)
            self.stats.count("dedup_cancelled")
            raise
        except Exception as e:  # delivered to every waiter by the flight, not lost
            flight.finish(failure=(type(e).__name__, str(e)))
        else:
            flight.finish()
        finally:
            if not flight.finished:  # anything else (interpreter exit): nobody waits forever
                flight.finish(cancelled=True)
        return whole

    async def follow(self, flight: Flight, request: httpx2.Request, role: str, stream: bool) -> httpx2.Response:
        """The answer of `flight` for one caller (who leaves when done with it)."""
        handed_over = False
        try:
            if not stream:
                # On the leader's own loop, waiting for its task costs no thread hop.
                with self._lock:
                    task = self._leaders.get(flight.key)
                if task is not None and task.get_loop() is asyncio.get_running_loop():
                    await asyncio.wait({task})
                    whole = None if task.cancelled() else task.result()
                    if role == "leader" and whole is not None:
                        whole.headers.setdefault(DEDUP_HEADER, role)  # the leader's caller takes the original
                        return whole
                if flight.finished:
                    return _whole(flight, request, role, timeout=0.0)
            head = await flight.wait_head_async()
            if head is None:
                _raise_end(flight, request)
            status, headers = head
            headers = [*headers, (DEDUP_HEADER, role)]
            if stream:
                handed_over = True
                return httpx2.Response(status, headers=headers, stream=_FlightStream(self, flight, request),
                                       request=request)
            start = 0
            while True:
                chunks, end = await flight.next_chunks_async(start)
                start += len(chunks)
                if end is not None:
                    return _whole(flight, request, role, timeout=0.0)
        finally:
            if not handed_over:
                self.leave(flight)

    # -- threads ----------------------------------------------------------------------------

    @staticmethod
    def publish(flight: Flight, response: httpx2.Response) -> None:
        """A thread's leader publishes its (read) answer."""
        flight.publish_head(response.status_code, _decoded_headers(response))
        flight.publish_chunk(response.content)
        flight.finish()

    def follow_sync(self, flight: Flight, request: httpx2.Request, timeout: float) -> httpx2.Response:
        try:
            return _whole(flight, request, "follower", timeout)
        finally:
            self.leave(flight)


class _FlightStream(httpx2.AsyncByteStream):
    """A shared stream, from its first chunk, for one caller."""

    def __init__(self, collapser: Collapser, flight: Flight, request: httpx2.Request) -> None:
        self._collapser, self._flight, self._request, self._left = collapser, flight, request, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        start = 0
        while True:
            chunks, end = await self._flight.next_chunks_async(start)
            for chunk in chunks:
                yield chunk
            start += len(chunks)
            if end is not None:
                if end[0] != "complete":
                    _raise_end(self._flight, self._request)
                return

    async def aclose(self) -> None:
        if not self._left:
            self._left = True
            self._collapser.leave(self._flight)


def _whole(flight: Flight, request: httpx2.Request, role: str, timeout: float) -> httpx2.Response:
    """The flight's whole answer, waiting at most `timeout` for each part (threads)."""
    head = flight.wait_head(timeout)
    if head is None:
        _raise_end(flight, request)
    status, headers = head
    body, start = [], 0
    while True:
        chunks, end = flight.next_chunks(start, timeout)
        body.extend(chunks)
        start += len(chunks)
        if end is not None:
            break
    if end[0] != "complete":
        _raise_end(flight, request)
    return httpx2.Response(status, headers=[*headers, (DEDUP_HEADER, role)], content=b"".join(body), request=request)


def _identity(call: Call) -> bytes:
    """The call's identity as the flights take a body: a JSON value."""
    return f'"{call.identity}"'.encode()


def _lease(call: Call, at_least: float = 1.0) -> float:
    """How long a claim (or a wait) may last: the caller's deadline."""
    return max(call.seconds_left(), at_least)


def _from_shared(shared: tuple[int, str, bytes], request: httpx2.Request) -> httpx2.Response:
    status, headers, body = shared
    pairs = [(k, v) for k, v in json.loads(headers)]
    return httpx2.Response(status, headers=[*pairs, (DEDUP_HEADER, "fleet")], content=body, request=request)


def _decoded_headers(response: httpx2.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k.lower() not in _UNSHARED_HEADERS]


def _raise_end(flight: Flight, request: httpx2.Request) -> NoReturn:
    """Raise, for one caller, how the shared call ended without an answer."""
    outcome, kind, message = flight.end() or ("cancelled", "", "")
    if outcome == "failed":
        error = getattr(httpx2, kind, None)
        if isinstance(error, type) and issubclass(error, httpx2.TransportError):
            raise error(message, request=request)
        raise FleetgateError(f"the shared upstream call failed ({kind}: {message})")
    raise FleetgateError("the shared upstream call was cancelled before it answered; send the request again")

"""The watcher of background responses: each call the request path hands over
(:class:`~fleetgate.path.call.Handoff`) is polled until its response ends, then
its quota and budget are settled from what it reports.

1. :meth:`BackgroundCalls.watch`: the call is watched in this pod (and, with Redis,
   recorded for the fleet, claimed by this pod) and polled first after ``[background]
   poll_min_seconds``, then at intervals doubling up to ``poll_max_seconds``.
2. Each poll is turned into one decision (:mod:`fleetgate.background.polling`): poll
   again later, or settle from its usage, for nothing, or at its worst case
   (:mod:`fleetgate.background.settling`).
3. A webhook that says a response ended (:mod:`fleetgate.webhooks`) polls it at once.
4. In a fleet, every pod renews its claims and takes the calls whose claim lapsed (their
   pod died, or closed and handed them back), and finishes them
   (:mod:`fleetgate.background.pending`).

One daemon thread watches for every client of the gateway, sync or async: a background
call outlives the call (and the event loop) that made it, and a pod takes over its dead
peers' calls whether or not it makes any. Polls run on a few worker threads. The thread
stops with the gateway (:meth:`BackgroundCalls.close`): in a fleet this pod's calls are
handed back to the others; embedded, nobody else could settle them, so they are settled
at their worst case.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx2

from fleetgate._core import Limiter
from fleetgate.background.pending import PendingCall, RedisPending
from fleetgate.background.polling import Decision, How, Polled, Poller, decide
from fleetgate.background.settling import Settler
from fleetgate.budget.guard import Budgets
from fleetgate.chains import Chain, Chains, carried_by
from fleetgate.config.background import BackgroundSettings
from fleetgate.deployments import Deployments
from fleetgate.errors import QueueFull
from fleetgate.metrics import GatewayMetrics
from fleetgate.outage import Outage
from fleetgate.path.call import Handoff
from fleetgate.prices import PriceTable
from fleetgate.redis_clients import redacted_url
from fleetgate.stats import GatewayStats

__all__ = ["BackgroundCalls"]

log = logging.getLogger("fleetgate")

_POLL_WORKERS = 4
#: Calls taken over from other pods per look.
_TAKE_AT_ONCE = 100


@dataclass(eq=False)
class _Watched:
    record: PendingCall
    #: This pod's holds (None: taken over from another pod).
    handoff: Handoff | None
    #: Request headers that poll it in this pod (its API key: never stored).
    auth: dict[str, str] = field(default_factory=dict)
    next_poll: float = 0.0
    interval: float = 0.0
    busy: bool = False
    #: Poll again as soon as the poll under way is over (a webhook came meanwhile).
    again: bool = False
    #: Whether a poll that said nothing was logged already.
    warned: bool = False
    #: Whether it is recorded in the fleet's store (claimed by this pod): until then no
    #: other pod knows it, and this one settles it alone.
    stored: bool = False


class BackgroundCalls:
    """This gateway's background calls: watched until they end, then settled."""

    def __init__(self, settings: BackgroundSettings, *, transport: httpx2.BaseTransport, redis_url: str | None,
                 limiter: Limiter, budgets: Budgets, prices: PriceTable, stats: GatewayStats,
                 metrics: GatewayMetrics | None, deployments: Deployments | None = None,
                 chains: Chains | None = None) -> None:
        """`chains`: the ledger that learns, once a response ends, what a call continuing it
        carries and where it is held."""
        self.settings = settings
        self._deployments = deployments
        self._chains = chains
        self.stats = stats
        self._budgets = budgets
        self._settler = Settler(limiter, budgets, prices, stats, metrics)
        self._poller = Poller(transport)
        #: The fleet's record (None: embedded, where `_watched` is all there is).
        self._store = RedisPending(redis_url) if redis_url else None
        self._outage = Outage(f"the background calls' Redis at {redacted_url(redis_url or '')}")
        #: This pod, as the holder of claims.
        self.owner = f"{os.getpid()}/{uuid.uuid4().hex[:12]}"
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stopping = False
        self._pool = ThreadPoolExecutor(max_workers=_POLL_WORKERS, thread_name_prefix="fleetgate-background-poll")
        self._thread: threading.Thread | None = None
        self._next_fleet = 0.0
        if self._store is not None:
            self._start()  # takes over the calls of pods that died, from the start

    # -- the request path's side -----------------------------------------------------------

    def room(self) -> QueueFull | None:
        """None when this pod can watch one more background call, else the refusal."""
        if len(self._watched) < self.settings.max_pending:
            return None
        self.stats.count("background_refused")
        return QueueFull(f"this pod already watches {self.settings.max_pending} background responses until they "
                         "end ([background] max_pending), so the cost of another could not be followed; the request "
                         "was not sent: retry later, or raise [background] max_pending",
                         "background", self.settings.max_pending)

    def watch(self, handoff: Handoff) -> None:
        """Watch a background call until its response ends, holding what `handoff` holds."""
        record = self._record(handoff)
        headers = handoff.request.headers
        auth = {k: headers[k] for k in ("authorization", "api-key") if k in headers}
        watched = _Watched(record, handoff, auth, time.monotonic() + self.settings.poll_min_seconds,
                           self.settings.poll_min_seconds)
        with self._lock:
            full = len(self._watched) >= self.settings.max_pending or self._stopping
            if not full:
                self._watched[record.response_id] = watched
        if full:  # sent before the room ran out (or while closing): settled now, at its worst
            self.stats.count("background_refused")
            log.warning("fleetgate: background response %s could not be watched (this pod watches %d, "
                        "[background] max_pending, or is closing): settled at its worst case, $%.6g",
                        record.response_id, self.settings.max_pending, record.worst)
            self._settler.settle(record, handoff, "worst", None, None)
            return
        if self._store is not None:
            try:
                self._store.add(record, self.owner, self.settings.claim_seconds)
                watched.stored = True
            except Exception as e:  # noqa: BLE001 - watched in this pod all the same, recorded later
                self._store_failed(e)
        self.stats.count("background_watched")
        self._start()
        with self._wake:
            # Watching calls, the pod looks at the fleet's store often (a webhook may have
            # said one ended); idle, seldom.
            self._next_fleet = min(self._next_fleet, time.monotonic() + self._busy_tick())
            self._wake.notify()

    def _auth_of(self, record: PendingCall) -> dict[str, str]:
        """The key to poll another pod's call with: its deployment's own (None: the
        fleet's, ``OPENAI_API_KEY``)."""
        deployment = self._deployments.named(record.deployment) if record.deployment and self._deployments else None
        return deployment.auth() if deployment is not None else {}

    def _record(self, handoff: Handoff) -> PendingCall:
        call, hold = handoff.call, handoff.recorded
        now = time.time()
        url = urlsplit(str(handoff.request.url))
        host = f"{url.hostname}:{url.port}" if url.port else url.hostname or ""
        where = urlunsplit((url.scheme, host, url.path, "", ""))  # no credentials, no query
        # The budgets held across the fleet, the call's and its deployment's: a pod taking it
        # over spends on them.
        held = {name for h in handoff.holds if not h.local for name in h.reservation.budgets}
        applicable = self._budgets.applicable(call.scope)
        if call.deployment is not None:
            applicable += self._budgets.of_deployment(call.deployment.name)
        budgets: list[tuple[str, float, str]] = [(b.name, b.limit, b.period) for b in applicable if b.name in held]
        headers = handoff.request.headers
        return PendingCall(
            handoff.response_id, where, call.model, now, now + self.settings.lease_seconds,
            call.estimate.prompt_tokens, call.estimate.max_output_tokens,
            # Its hold is its worst case at the tier it asked for (Budgets.worst_case).
            hold.reservation.dollars if hold is not None else 0.0,
            project=headers.get("openai-project"), organization=headers.get("openai-organization"),
            tier=call.estimate.service_tier, budgets=budgets,
            recorded=hold is not None and not hold.local,
            feature=hold.feature if hold else "", user=hold.user if hold else "", team=hold.team if hold else "",
            deployment=call.deployment.key if call.deployment is not None else "")

    # -- webhooks ------------------------------------------------------------------------------

    def ended(self, response_id: str) -> bool:
        """A webhook says `response_id` ended: poll it now and settle it (in this thread
        when this pod watches it; else its pod is told). Whether it is pending anywhere."""
        with self._lock:
            watched = self._watched.get(response_id)
            if watched is not None:
                if watched.busy:
                    watched.again = True
                    return True
                watched.busy = True
        if watched is not None:
            self._poll_one(watched)
            return True
        if self._store is None:
            return False
        try:
            return self._store.mark_due(response_id)
        except Exception as e:  # noqa: BLE001 - it is polled all the same
            self._store_failed(e)
            return False

    # -- reading -------------------------------------------------------------------------------

    def deployment_of(self, response_id: str) -> str | None:
        """The deployment (its key) a response this pod watches runs at (None: not watched
        here, or sent to the gateway's one upstream)."""
        with self._lock:
            watched = self._watched.get(response_id)
        return (watched.record.deployment or None) if watched is not None else None

    def pending(self) -> int:
        """Background calls this pod watches now."""
        with self._lock:
            return len(self._watched)

    def fleet_pending(self) -> int:
        """Background calls not yet settled in the whole fleet (embedded: this pod's)."""
        return self._store.count() if self._store is not None else self.pending()

    # -- the watcher ---------------------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._thread = threading.Thread(target=_run, args=(weakref.ref(self), self._wake),
                                            name="fleetgate-background", daemon=True)
        self._thread.start()

    def _step(self) -> float:
        """One turn of the watcher: poll what is due, look after the fleet's claims; the
        seconds until the next turn."""
        now = time.monotonic()
        with self._lock:
            if self._stopping:
                return 0.0
            due = [w for w in self._watched.values() if not w.busy and w.next_poll <= now]
            for w in due:
                w.busy = True
        for w in due:
            self._pool.submit(self._poll_one, w)
        if self._store is not None and now >= self._next_fleet:
            self._fleet(self._store)
            self._next_fleet = now + (self._busy_tick() if self._watched else self.settings.claim_seconds / 3)
        with self._lock:
            waits = [w.next_poll for w in self._watched.values() if not w.busy]
        if self._store is not None:
            waits.append(self._next_fleet)
        return max(0.01, min(waits, default=now + 60.0) - time.monotonic())

    def _busy_tick(self) -> float:
        return min(1.0, self.settings.claim_seconds / 3)

    def _fleet(self, store: RedisPending) -> None:
        """Renew this pod's claims, take the calls whose claim lapsed, and poll at once
        those a webhook said ended."""
        try:
            with self._lock:
                mine = [i for i, w in self._watched.items() if w.stored]
                unstored = [w for w in self._watched.values() if not w.stored]
            for late in unstored:  # watched while the store was down: recorded now
                store.add(late.record, self.owner, self.settings.claim_seconds)
                late.stored = True
            held = set(store.renew(mine, self.owner, self.settings.claim_seconds))
            lost = [i for i in mine if i not in held]
            taken = store.take(self.owner, self.settings.claim_seconds, _TAKE_AT_ONCE)
            due = set(store.due([i for i in mine if i in held]))
        except Exception as e:  # noqa: BLE001 - tried again at the next turn
            self._store_failed(e)
            return
        self._outage.answered("background calls are recorded for the fleet again")
        for response_id in lost:  # finished or taken by another pod while this one was slow
            with self._lock:
                watched = self._watched.get(response_id)
                if watched is None or watched.busy:
                    continue
                del self._watched[response_id]
            self._settler.give_back(watched.record, watched.handoff)
        now = time.monotonic()
        with self._lock:
            for record in taken:
                if record.response_id not in self._watched:
                    self._watched[record.response_id] = _Watched(record, None, self._auth_of(record), next_poll=now,
                                                                 interval=self.settings.poll_min_seconds, stored=True)
                    self.stats.count("background_taken_over")
                    log.info("fleetgate: took over background response %s from a pod that stopped watching it",
                             record.response_id)
            for response_id in due:
                watched = self._watched.get(response_id)
                if watched is not None:
                    watched.next_poll = now
                    watched.again = watched.busy

    def _poll_one(self, watched: _Watched) -> None:
        """Poll one call and act on it (in a worker thread, or a webhook's)."""
        try:
            polled = self._poll(watched)
            overdue = time.time() >= watched.record.ends_by
            decision = decide(polled, watched.interval, self.settings, overdue)
            if decision.how is not None:
                if self._settle(watched, decision.how, polled):
                    return
                decision = Decision(None, self.settings.poll_max_seconds)
        except Exception:  # noqa: BLE001 - logged; the call is polled again
            self.stats.count("background_poll_errors")
            log.exception("fleetgate: polling background response %s failed; it is polled again",
                          watched.record.response_id)
            decision = Decision(None, self.settings.poll_max_seconds)
        with self._wake:
            watched.busy = False
            watched.interval = decision.wait
            watched.next_poll = time.monotonic() + (0.0 if watched.again else decision.wait)
            watched.again = False
            self._wake.notify()

    def _poll(self, watched: _Watched) -> Polled:
        """Poll one call; one that said nothing of the response is counted, and said once
        per call."""
        polled = self._poller.poll(watched.record, watched.auth)
        if polled.status == "unreachable":
            self.stats.count("background_poll_errors")
            if not watched.warned:
                watched.warned = True
                log.warning("fleetgate: could not poll background response %s (%s); it is polled again (said once), "
                            "and settled at its worst case if still unknown [background] lease_seconds after it was "
                            "made", watched.record.response_id, polled.reason)
        return polled

    # -- settling ------------------------------------------------------------------------------

    def _settle(self, watched: _Watched, how: How, polled: Polled | None) -> bool:
        """Settle a call this pod holds the claim on, once; False to try again later."""
        record = watched.record
        if self._store is not None and watched.stored:
            try:
                held = record.response_id in self._store.renew([record.response_id], self.owner,
                                                                self.settings.claim_seconds)
            except Exception as e:  # noqa: BLE001 - see below
                self._store_failed(e)
                # This pod's own call is settled all the same (another pod could take it only
                # once its claim lapsed: at worst spent twice, never left unspent); one taken
                # over is tried again at the next poll.
                held = watched.handoff is not None
                if not held:
                    return False
            if not held:  # another pod took it over (this one was too slow): it settles it
                self._forget(watched)
                self._settler.give_back(record, watched.handoff)
                return True
        usage = polled.usage if polled is not None else None
        tier = polled.tier if polled is not None else None
        if not self._settler.settle(record, watched.handoff, how, usage, tier):
            return False
        if self._chains is not None and usage is not None:  # a call continuing it is sent there
            self._chains.learn(Chain("response", record.response_id), carried_by(usage), record.deployment or None)
        if self._store is not None:
            try:
                self._store.finish(record.response_id, self.owner)
            except Exception as e:  # noqa: BLE001 - settled; whoever takes its record next finds it ended
                self._store_failed(e)
        self._forget(watched)
        return True

    def _store_failed(self, error: Exception) -> None:
        """The store did not answer: counted, and said once per outage."""
        self.stats.count("background_store_errors")
        self._outage.failed(error, "this pod keeps watching and settling its own background calls; a call it "
                                   "could not record is not taken over by another pod if this one stops (its "
                                   "budget hold then lapses after [background] lease_seconds)")

    def _forget(self, watched: _Watched) -> None:
        with self._lock:
            if self._watched.get(watched.record.response_id) is watched:
                del self._watched[watched.record.response_id]

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop watching. In a fleet the calls still running are handed back to the other
        pods (each keeps its budget hold until it lapses); embedded, they are settled at
        their worst case, since nobody else could settle them."""
        with self._wake:
            if self._stopping:
                return
            self._stopping = True
            self._wake.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        self._pool.shutdown(wait=True)
        with self._lock:
            left = list(self._watched.values())
            self._watched.clear()
        if left and self._store is not None:
            try:
                self._store.release([w.record.response_id for w in left], self.owner)
                log.info("fleetgate: handed %d background responses still running to the fleet", len(left))
            except Exception as e:  # noqa: BLE001 - their claims lapse by themselves
                self.stats.count("background_store_errors")
                log.warning("fleetgate: could not hand %d background responses to the fleet (%s); other pods take "
                            "them over once this pod's claims lapse", len(left), e)
        elif left:
            for watched in left:
                self._settler.settle(watched.record, watched.handoff, "worst", None, None)
        self._poller.close()
        if self._store is not None:
            self._store.close()


def _run(ref: weakref.ref[BackgroundCalls], wake: threading.Condition) -> None:
    """The watcher thread: holds its gateway's watcher weakly, so an unclosed gateway that
    is dropped stops it too."""
    while True:
        me = ref()
        if me is None or me._stopping:
            return
        try:
            wait = me._step()
        except Exception:  # noqa: BLE001 - logged; the next turn tries again
            log.exception("fleetgate: the background watcher's turn failed; it goes on")
            wait = 1.0
        del me
        with wake:
            wake.wait(timeout=wait)

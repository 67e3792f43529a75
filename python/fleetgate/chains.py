"""The context OpenAI holds for Responses chains, as the calls continuing them carry it.

A Responses call with ``previous_response_id`` or ``conversation`` is billed, and counted
against tokens per minute, for input its body does not show: the context OpenAI holds.
This ledger remembers, per chain, how many input tokens a call continuing it will carry,
and which deployment holds it (``[deployments]``: the chain's state lives there only; the
ledger keeps where files and batches are held alike, :mod:`fleetgate.path._async.holders`):

1. An answer is learned from its ``usage``: a call continuing response R carries R's input
   and R's output (its reasoning included: whether reasoning items are carried depends on
   the model, so the ledger assumes they are); a call in conversation C carries what the
   last answer in C did, input and output. A compacted chain (``context_management``)
   carries less than that, which the ledger learns from the next answer. Instructions are
   not carried over, so the figure errs on the high side.
2. Each record is kept in process (a bounded LRU) and, with Redis, in a key per chain
   (``fg:chain:<kind>:<hash of its id>``, expiring after ``[server_context] ttl_seconds``),
   written by one background thread after the answer, in pipelines of what a few
   milliseconds bring: the call that made it never waits.
3. A call continuing a chain asks the ledger (:meth:`Chains.lookup`): a response's record
   never changes, so one known in process needs no round trip; a conversation grows with
   each turn, wherever it is taken, so its record is read from Redis (one GET) every time.
   A call that continues no chain never asks.
4. Redis down: ``failure_policy = "fail_open"`` treats the chain as unknown (said once per
   outage), ``fail_closed`` refuses the call (``StoreUnavailable``).

What a call does with an unknown chain (count it, or reserve an allowance) is the
``context`` layer's (:mod:`fleetgate.path._async.context`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from fleetgate.config import ServerContextSettings
from fleetgate.errors import StoreUnavailable
from fleetgate.estimate import usage_counts
from fleetgate.outage import Outage
from fleetgate.redis_clients import redacted_url, redis_client
from fleetgate.stats import GatewayStats

if TYPE_CHECKING:
    import redis
    import redis.cluster

__all__ = ["Chain", "Chains", "Held", "carried_by", "continued"]

log = logging.getLogger("fleetgate")

#: How long the fleet remembers where a file or a batch is held: as long as OpenAI keeps a
#: batch's output files by default (30 days).
HELD_OBJECT_SECONDS = 30 * 86_400
#: Records a background write sends in one pipeline at most, and how long it gathers them
#: (a pipeline per answer would cost the answers' own thread time on a busy pod).
_WRITE_BATCH = 256
_WRITE_GATHER = 0.005


class Chain(NamedTuple):
    """A chain a Responses call may continue: a stored response (``previous_response_id``)
    or a conversation, by its OpenAI id; or another object a deployment holds, a file or a
    batch (:mod:`fleetgate.path._async.holders`)."""

    kind: Literal["response", "conversation", "file", "batch"]
    id: str


class Held(NamedTuple):
    """What the ledger knows of a chain: the input tokens a call continuing it carries, and
    the deployment holding it, by its key (``gpt-4.1@sweden``; None: the gateway's one
    upstream, or not known). A file or a batch carries no tokens: 0."""

    tokens: int
    home: str | None = None

    def encoded(self) -> str:
        """As kept in Redis: ``"1840"``, or ``"1840 gpt-4.1@sweden"`` (keys hold no spaces)."""
        return str(self.tokens) if self.home is None else f"{self.tokens} {self.home}"

    @classmethod
    def decoded(cls, raw: bytes | str) -> Held:
        """Read back what :meth:`encoded` wrote; ValueError when it is not that."""
        text = raw.decode() if isinstance(raw, bytes) else raw
        tokens, _, home = text.partition(" ")
        return cls(int(tokens), home or None)


def continued(body: dict[str, Any]) -> Chain | None:
    """The chain a Responses request body continues, or None."""
    previous = body.get("previous_response_id")
    if isinstance(previous, str) and previous:
        return Chain("response", previous)
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if isinstance(conversation, str) and conversation:
        return Chain("conversation", conversation)
    return None


def carried_by(usage: dict[str, Any]) -> int:
    """Input tokens a call continuing an answer with `usage` will carry: its input and its
    output (reasoning included)."""
    counts = usage_counts(usage)
    return counts.prompt + counts.output


class Chains:
    """The ledger of one gateway: in process, and across the fleet through `redis_url`."""

    def __init__(self, settings: ServerContextSettings, redis_url: str | None, stats: GatewayStats,
                 failure_policy: str) -> None:
        self.settings, self.stats, self.failure_policy = settings, stats, failure_policy
        self._local: OrderedDict[Chain, Held] = OrderedDict()
        self._lock = threading.Lock()
        self._url = redis_url
        self._redis: redis.Redis | redis.cluster.RedisCluster | None = None
        self._outage = Outage(f"the chains' Redis at {redacted_url(redis_url)}" if redis_url else "the chains' store")
        self._writes: queue.SimpleQueue[tuple[Chain, Held] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        #: Records queued and not yet sent, and who waits for them (:meth:`flush`); under
        #: the ledger's one lock, so that learning takes it once.
        self._unsent = 0
        self._sent = threading.Condition(self._lock)
        self._closed = False

    @staticmethod
    def key(chain: Chain) -> str:
        """The Redis key of `chain`: its id hashed (an OpenAI id is a handle on stored
        content, kept out of the store's key space)."""
        digest = hashlib.blake2b(chain.id.encode(), digest_size=16).hexdigest()
        return f"fg:chain:{chain.kind}:{digest}"

    # -- reading -------------------------------------------------------------------------------

    def local(self, chain: Chain) -> Held | None:
        """What this process knows of `chain` (None: nothing)."""
        with self._lock:
            found = self._local.get(chain)
            if found is not None:
                self._local.move_to_end(chain)
            return found

    def _needs_store(self, chain: Chain, known: Held | None) -> bool:
        return self._url is not None and (known is None or chain.kind == "conversation")

    def lookup(self, chain: Chain) -> Held | None:
        """The input tokens a call continuing `chain` carries and where it is held, or None
        when the fleet does not know it. Raises StoreUnavailable when Redis is down under ``fail_closed``."""
        known = self.local(chain)
        if not self._needs_store(chain, known):
            return known
        return self._merged(chain, known, self._remote(chain))

    async def lookup_async(self, chain: Chain) -> Held | None:
        """:meth:`lookup` without blocking the event loop (Redis is asked on a worker thread)."""
        known = self.local(chain)
        if not self._needs_store(chain, known):
            return known
        return self._merged(chain, known, await asyncio.to_thread(self._remote, chain))

    def _merged(self, chain: Chain, known: Held | None, remote: Held | None) -> Held | None:
        if remote is None:
            return known
        if known is None or remote.tokens > known.tokens:
            with self._lock:
                self._remember(chain, remote)
            return remote
        return known

    def _remote(self, chain: Chain) -> Held | None:
        """`chain`'s record in Redis (None: none, or Redis is down under ``fail_open``)."""
        if self._outage.suspended():
            self._down(None)
            return None
        try:
            raw = self._client().get(self.key(chain))
        except Exception as e:  # noqa: BLE001 - any failure of the store is an outage, handled below
            self._outage.failed(e, "calls continuing a chain not known in this process treat it as unknown"
                                if self.failure_policy == "fail_open" else "calls continuing a chain are refused")
            self._down(e)
            return None
        self._outage.answered()
        self.stats.count("chain_reads")
        if raw is None:
            return None
        try:
            return Held.decoded(raw)
        except (TypeError, ValueError, UnicodeDecodeError):
            log.warning("fleetgate: %s holds %r, not a chain record; the chain is treated as unknown",
                        self.key(chain), raw)
            return None

    def _down(self, error: Exception | None) -> None:
        """Redis is down: the chain is unknown (``fail_open``), or StoreUnavailable."""
        self.stats.count("chain_store_down")
        if self.failure_policy == "fail_closed":
            raise StoreUnavailable(
                f"{self._outage.store} is unavailable{f' ({error})' if error else ''}, and failure_policy is "
                "fail_closed, so a call continuing a Responses chain cannot learn the context it carries: check "
                'that Redis is reachable, or set failure_policy = "fail_open" to reserve for an unknown chain '
                "meanwhile") from error

    def _client(self) -> redis.Redis | redis.cluster.RedisCluster:
        if self._redis is None:
            assert self._url is not None
            self._redis = redis_client(self._url)
        return self._redis

    # -- learning ------------------------------------------------------------------------------

    def learn(self, chain: Chain, tokens: int, home: str | None = None) -> None:
        """A call continuing `chain` carries `tokens`, held by deployment `home`: remembered
        here at once, and sent to the fleet in the background (its key is made there, off
        the answer's thread)."""
        held = Held(tokens, home)
        with self._lock:
            self._remember(chain, held)
            if self._url is None or self._closed:
                return
            self._unsent += 1
            self._writes.put((chain, held))
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="fleetgate-chains", daemon=True)
                self._writer.start()

    def _remember(self, chain: Chain, held: Held) -> None:
        """Keep `chain`'s record in process; the caller holds ``self._lock``."""
        self._local[chain] = held
        self._local.move_to_end(chain)
        if len(self._local) > self.settings.local_chains:
            self._local.popitem(last=False)

    def _write_loop(self) -> None:
        """Send what was learned, in pipelines of what came within `_WRITE_GATHER` of the
        first record, until :meth:`close`."""
        while True:
            first = self._writes.get()
            if first is None:
                return
            batch, until = [first], time.monotonic() + _WRITE_GATHER
            while len(batch) < _WRITE_BATCH:
                try:
                    item = self._writes.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._send(batch)
                    return
                batch.append(item)
            self._send(batch)

    def _send(self, batch: list[tuple[Chain, Held]]) -> None:
        try:
            self._write(batch)
        finally:
            with self._sent:
                self._unsent -= len(batch)
                self._sent.notify_all()

    def _write(self, batch: list[tuple[Chain, Held]]) -> None:
        ttl = self.settings.ttl_seconds
        try:
            pipe = self._client().pipeline(transaction=False)
            for chain, held in batch:
                pipe.set(self.key(chain), held.encoded(),
                         ex=HELD_OBJECT_SECONDS if chain.kind in ("file", "batch") else ttl)
            pipe.execute()
        except Exception as e:  # noqa: BLE001 - an outage: logged once, counted, the records stay in process
            self.stats.count("chain_write_failures", len(batch))
            self._outage.failed(e, "chains learned meanwhile are known to this process only")
            return
        self._outage.answered()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait at most `timeout` seconds until what was learned so far is sent to Redis
        (or failed to be); True when it is."""
        with self._sent:
            return self._sent.wait_for(lambda: self._unsent == 0, timeout)

    def close(self) -> None:
        """Send what is still queued and stop the writer."""
        with self._lock:  # no record is queued after the writer's stop
            if self._closed:
                return
            self._closed = True
            writer = self._writer
            if writer is not None:
                self._writes.put(None)
        if writer is not None:
            writer.join(timeout=10)

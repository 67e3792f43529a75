# Generated from fleetgate/path/_async/context.py by scripts/unasync.py: edit that file, then run the script.
"""context, the shape layer's last step: a Responses call that continues a chain (``previous_response_id``,
``conversation``) is billed, and counted against tokens per minute, for the context
OpenAI holds besides its body. Before the budget and the quotas reserve for it, that
context is added to its estimate (:attr:`Estimate.held`): as the chain ledger knows it
(:mod:`fleetgate.chains`); for a chain the fleet does not know, as OpenAI's input-token
counting endpoint counts it (sent through the gateway's upstream, not gated itself), or the
configured allowance (``[server_context] unknown``, ``unknown_chain_tokens``). Once its
answer is in, what a call continuing it will carry is learned: its input and its output,
under its response id (a stored response) and its conversation, with the deployment that
answered (``[deployments]``): a call continuing the chain is sent there (:attr:`Call.home`).

Contract: calls that continue no chain are passed on untouched and ask nothing; a chain
the ledger cannot be asked about (Redis down) is unknown under ``fail_open`` and refused
with ``StoreUnavailable`` under ``fail_closed``; counting that fails falls back to the
allowance (counted in ``stats["chain_count_failures"]``, said once per run of failures).
The estimate is replaced, never added to, so a call run through the rest again (a queued
budget's retry) reserves its context once.
"""

from __future__ import annotations

import dataclasses
import json

import httpx2

from fleetgate.chains import Chain, Chains, carried_by, continued
from fleetgate.config import ServerContextSettings
from fleetgate.errors import StoreUnavailable
from fleetgate.outage import Outage
from fleetgate.path._sync.layer import Layer, Next
from fleetgate.path.call import Call, Outcome
from fleetgate.path.refusals import refuse
from fleetgate.path.wire import response_id_of
from fleetgate.stats import GatewayStats

__all__ = ["HELD_HEADER", "Context"]

#: The answer's header that says what a call continuing a chain reserved for the context
#: OpenAI holds, and where the figure came from: ``"1840; ledger"`` (or ``count``, ``allowance``).
HELD_HEADER = "x-fleetgate-held-context"

#: What the counting endpoint reads of a Responses request (the SDK's
#: ``responses.input_tokens.count`` parameters).
_COUNTED = ("model", "input", "instructions", "previous_response_id", "conversation", "tools", "tool_choice",
            "reasoning", "text", "truncation", "parallel_tool_calls", "personality")
#: Headers of the call not copied onto its count: the count has a body of its own, and an
#: idempotency key is the call's alone (upstream would take the call for a repeat of its count).
_NOT_COPIED = frozenset({b"content-length", b"content-type", b"transfer-encoding", b"x-stainless-retry-count",
                         b"idempotency-key"})


class Context(Layer):
    name = "context"

    def __init__(self, chains: Chains, settings: ServerContextSettings, inner: httpx2.BaseTransport,
                 stats: GatewayStats) -> None:
        self.chains, self.settings, self.inner, self.stats = chains, settings, inner, stats
        self._counting = Outage("OpenAI's input-token counting endpoint")

    def handle(self, call: Call, next: Next) -> httpx2.Response:  # noqa: A002
        if call.endpoint != "/responses":
            return next(call)
        chain = continued(call.body)
        if chain is not None:
            try:
                held, source = self._held(call, chain)
            except StoreUnavailable as e:
                self.stats.count("refused")
                return refuse(call, e)
            call.estimate = dataclasses.replace(call.estimate, held=held)
            call.marks[HELD_HEADER] = f"{held}; {source}"
        stored = call.body.get("store") is not False
        if chain is None and not stored:
            return next(call)
        response = next(call)
        call.when_done(lambda outcome: self._learn(call, chain if chain is not None and chain.kind == "conversation"
                                                   else None, stored, response, outcome))
        return response

    def _held(self, call: Call, chain: Chain) -> tuple[int, str]:
        """The input tokens OpenAI holds for `call`, beyond its body, and where the figure
        comes from: ``ledger``, ``count`` or ``allowance``."""
        known = self.chains.lookup(chain)  # StoreUnavailable: refused by the caller
        if known is not None:
            self.stats.count("chain_known")
            call.home = known.home
            return known.tokens, "ledger"
        if self.settings.unknown == "count":
            counted = self._count(call)
            if counted is not None:
                self.stats.count("chain_counted")
                return counted, "count"
        self.stats.count("chain_allowance")
        return self.settings.unknown_chain_tokens, "allowance"

    def _count(self, call: Call) -> int | None:
        """The context OpenAI holds for the call, as its counting endpoint counts the call's
        whole input (body and held context) less the body; 0 when it does not know the
        chain (the call will be answered 404 and billed nothing); None when it could not say."""
        request = call.request
        url = request.url.copy_with(path=request.url.path + "/input_tokens")
        body = {k: call.body[k] for k in _COUNTED if k in call.body}
        headers = [(k, v) for k, v in request.headers.raw if k.lower() not in _NOT_COPIED]
        headers.append((b"content-type", b"application/json"))
        count = httpx2.Request("POST", url, headers=headers, content=json.dumps(body).encode(),
                               extensions={"timeout": httpx2.Timeout(self.settings.count_timeout_seconds).as_dict()})
        try:
            response = self.inner.handle_request(count)
            try:
                response.read()
            finally:
                response.close()
        except httpx2.TransportError as e:
            self._not_counted(f"no answer: {type(e).__name__}: {e}")
            return None
        if response.status_code == 404:
            self._counting.answered("unknown chains are counted again")
            self.stats.count("chain_not_found")
            return 0
        if response.status_code != 200:
            self._not_counted(f"HTTP {response.status_code}")
            return None
        try:
            tokens = json.loads(response.content).get("input_tokens")
        except (ValueError, AttributeError):
            tokens = None
        if not isinstance(tokens, int):
            self._not_counted("an answer without input_tokens")
            return None
        self._counting.answered("unknown chains are counted again")
        return max(0, tokens - call.estimate.prompt_tokens)

    def _not_counted(self, why: str) -> None:
        self.stats.count("chain_count_failures")
        self._counting.failed(why, f"calls continuing an unknown chain reserve [server_context] "
                                   f"unknown_chain_tokens = {self.settings.unknown_chain_tokens}")

    def _learn(self, call: Call, conversation: Chain | None, stored: bool, response: httpx2.Response,
               outcome: Outcome) -> None:
        """The answer is in: what a call continuing it (or its conversation) will carry."""
        if outcome.status != 200 or outcome.usage is None:
            return
        tokens, home = carried_by(outcome.usage), call.deployment.key if call.deployment is not None else None
        if conversation is not None:
            self.chains.learn(conversation, tokens, home)
        if stored:
            found = outcome.response_id if call.stream else response_id_of(response.content)
            if found is not None:
                self.chains.learn(Chain("response", found), tokens, home)

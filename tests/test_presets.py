"""Token budgets by request type: the preset's model, its output limit, and input cut to
size by real tokens, with a warning and a header the caller sees."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

import fleetgate as fg
from fleetgate.sdk import GatedOpenAI

MODEL = "gpt-4.1-mini"
PRESETS = {
    "summarize": {"model": "gpt-4.1-nano", "max_input_tokens": 200, "max_output_tokens": 50},
    "embed": {"max_input_tokens": 20},
}
LONG = " ".join(f"word{i}" for i in range(2_000))


def upstream(seen: list[dict[str, Any]]) -> httpx2.MockTransport:
    def handle(request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        seen.append(body)
        usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
        if request.url.path.endswith("/embeddings"):
            data = [{"object": "embedding", "index": i, "embedding": [0.0]} for i in range(len(body["input"]))]
            return httpx2.Response(200, json={"object": "list", "data": data, "model": body["model"], "usage": usage})
        return httpx2.Response(200, json={
            "id": "c", "object": "chat.completion", "created": 0, "model": body["model"], "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]})

    return httpx2.MockTransport(handle)


def client_for(gate: fg.Gateway, seen: list[dict[str, Any]]) -> GatedOpenAI:
    return GatedOpenAI(base_url="http://upstream.test/v1", api_key="sk-fake", max_retries=0,
                       http_client=httpx2.Client(transport=gate.transport(inner=upstream(seen))))


def test_a_preset_cuts_long_input_by_tokens_and_says_so() -> None:
    gate = fg.Gateway(presets=PRESETS)
    seen: list[dict[str, Any]] = []
    client = client_for(gate, seen)
    system = "You summarize. " * 20
    with gate.scope(preset="summarize"), pytest.warns(fg.InputTruncated) as warned:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=4_000,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": LONG}])
    sent = seen[0]
    assert sent["model"] == "gpt-4.1-nano" and sent["max_tokens"] == 50
    assert sent["messages"][0]["content"] == system, "system messages are never cut"
    user = sent["messages"][1]["content"]
    assert user.startswith("word0 word1") and user.endswith(" [... truncated]")
    texts = [m["content"] for m in sent["messages"]]
    assert fg.chat_prompt_tokens("gpt-4.1-nano", texts) <= 200
    cut = int(raw.headers["x-fleetgate-truncated"])
    (truncated,) = [w.message for w in warned if isinstance(w.message, fg.InputTruncated)]
    assert cut > 1_500 and truncated.cut == cut


def test_a_preset_sets_an_output_limit_and_follows_the_feature() -> None:
    gate = fg.Gateway(presets=PRESETS)
    seen: list[dict[str, Any]] = []
    client = client_for(gate, seen)
    with gate.scope(feature="summarize"):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert seen[0]["max_completion_tokens"] == 50 and "max_tokens" not in seen[0]
    assert "x-fleetgate-truncated" not in raw.headers, "short input is not cut"
    with gate.scope(feature="other"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert seen[1]["model"] == MODEL and "max_completion_tokens" not in seen[1]


def test_each_embedding_input_is_cut_on_its_own() -> None:
    gate = fg.Gateway(presets=PRESETS)
    seen: list[dict[str, Any]] = []
    with gate.scope(preset="embed"), pytest.warns(fg.InputTruncated):
        client_for(gate, seen).embeddings.create(model="text-embedding-3-small", input=[LONG, "short"])
    first, second = seen[0]["input"]
    assert fg.count_tokens("text-embedding-3-small", first) <= 20 and second == "short"


def test_a_preset_that_does_not_exist_is_a_config_error() -> None:
    gate = fg.Gateway(presets=PRESETS)
    with pytest.raises(fg.ConfigError, match=r"preset 'nope' is not configured.*summarize"):
        gate.scope(preset="nope")
    seen: list[dict[str, Any]] = []
    with fg.scope(preset="nope"), pytest.raises(fg.ConfigError, match=r"\[presets.nope\]"):
        client_for(gate, seen).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert seen == [], "nothing was sent"

"""The semantic layer through the gateway: paraphrases served, traps refused, nothing
across namespaces, tenants or system prompts, TTL, the fleet's journal (another process,
a new pod warming up), the embedded file, streams replayed, and the guards alone."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate.cache import LocalEmbedder
from fleetgate.cache.guards import Prompt, near_miss
from fleetgate.cli import main as cli
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI

MODEL = "gpt-4.1-mini"
PAIRS = Path(__file__).parent / "data" / "semantic_pairs.jsonl"
#: Written apart from the guards, and not used to tune them.
HELD_OUT = Path(__file__).parent / "data" / "semantic_pairs_holdout.jsonl"
EMBEDDER = LocalEmbedder()  # loaded once for the module


def ask(text: str, system: str = "Answer briefly.", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "temperature": 0, **extra,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": text}]}


def semantic_gate(url: str, redis_url: str | None = None, **semantic: Any) -> fg.Gateway:
    return fg.Gateway(base_url=url, redis_url=redis_url, embedder=EMBEDDER,
                      cache={"enabled": True, "semantic": {"enabled": True, **semantic}})


def served_by(response: Any) -> str | None:
    return response.headers.get("x-fleetgate-cache")  # type: ignore[no-any-return]


def settle(gate: fg.Gateway) -> None:
    """Wait until every answer stored so far is indexed."""
    assert gate.cache.semantic is not None
    gate.cache.semantic.flush()


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> str | None:
    return None if request.param == "memory" else request.getfixturevalue("redis_url")


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_paraphrase_is_served_and_a_trap_is_not(fake_openai: FakeOpenAI, store: str | None) -> None:
    gate = semantic_gate(fake_openai.base_url, store)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(user=f"u-{uuid.uuid4()}"):
        first = client.chat.completions.with_raw_response.create(**ask("How do I reset my password?"))
        settle(gate)
        again = client.chat.completions.with_raw_response.create(**ask("how can I reset my password"))
        trap = client.chat.completions.with_raw_response.create(**ask("How do I not reset my password?"))
        number = client.chat.completions.with_raw_response.create(**ask("How do I reset my password 2 times?"))
    assert served_by(again) == "semantic" and float(again.headers["x-fleetgate-similarity"]) >= 0.9
    assert again.parse().model_dump() == first.parse().model_dump()
    assert served_by(trap) is None and served_by(number) is None
    assert fake_openai.counters(MODEL).requests == 3
    assert gate.stats["semantic_hits"] == 1 and gate.stats["semantic_guarded_negation"] == 1
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_nothing_crosses_users_tenants_models_or_system_prompts(fake_openai: FakeOpenAI) -> None:
    gate = semantic_gate(fake_openai.base_url)
    client = gate.openai(api_key="sk-tenant-a", max_retries=0)
    other_tenant = gate.openai(api_key="sk-tenant-b", max_retries=0)
    # Each check asks a new paraphrase, so that no answer comes from the exact layer.
    paraphrases = iter(["what are your opening hours", "What are your opening hours, please?",
                        "tell me your opening hours", "Tell me your opening hours please.",
                        "what're your opening hours?", "What are your opening hours ?", "opening hours?"])

    def served(asker: Any = client, **extra: Any) -> str | None:
        return served_by(asker.chat.completions.with_raw_response.create(**{**ask(next(paraphrases)), **extra}))

    with gate.scope(user="ana"):
        client.chat.completions.create(**ask("What are your opening hours?"))
        settle(gate)
    with gate.scope(user="ben"):  # another user
        assert served() is None
    with gate.scope(user="ana"):
        assert served(other_tenant) is None  # another API key
        assert served(messages=ask("What are your opening hours?", system="Answer in French.")["messages"]) is None
        assert served(model="gpt-4.1") is None
        assert served(max_tokens=5) is None
        assert served() == "semantic"
    with gate.scope():  # no user: the default namespace ("user") has nothing to share in
        assert served() is None
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_global_namespace_shares_across_users_when_configured(fake_openai: FakeOpenAI) -> None:
    gate = semantic_gate(fake_openai.base_url, namespace="global")
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(user="ana"):
        client.chat.completions.create(**ask("What is the return policy?"))
    settle(gate)
    with gate.scope(user="ben"):
        answer = client.chat.completions.with_raw_response.create(**ask("what's the return policy"))
    assert served_by(answer) == "semantic"
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_entries_expire(fake_openai: FakeOpenAI, store: str | None) -> None:
    gate = fg.Gateway(base_url=fake_openai.base_url, redis_url=store, embedder=EMBEDDER,
                      cache={"enabled": True, "ttl_seconds": 3.0, "semantic": {"enabled": True}})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(user=f"u-{uuid.uuid4()}"):
        # A TTL a busy machine cannot outrun between storing and asking again.
        client.chat.completions.create(**ask("Where is my parcel?"))
        settle(gate)
        assert served_by(client.chat.completions.with_raw_response.create(**ask("where's my parcel"))) == "semantic"
        time.sleep(3.1)
        assert served_by(client.chat.completions.with_raw_response.create(**ask("where is my parcel now"))) is None
    assert fake_openai.counters(MODEL).requests == 2
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_forgetting_an_answer_stops_serving_it(fake_openai: FakeOpenAI) -> None:
    gate = semantic_gate(fake_openai.base_url)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(user="ana"):
        first = client.chat.completions.with_raw_response.create(**ask("How do I cancel my order?"))
        settle(gate)
        assert gate.cache.semantic is not None and len(gate.cache.semantic) == 1
        [(key, prompt)] = gate.cache.semantic.entries()
        assert prompt == "How do I cancel my order?"
        gate.cache.semantic.forget(key)
        answer = client.chat.completions.with_raw_response.create(**ask("how can I cancel my order"))
    assert served_by(first) is None and served_by(answer) is None
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_a_stream_is_replayed_as_a_stream(fake_openai: FakeOpenAI, store: str | None) -> None:
    gate = semantic_gate(fake_openai.base_url, store)
    client = gate.openai(api_key="sk-fake", max_retries=0)

    def text(chunks: Any) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with gate.scope(user=f"u-{uuid.uuid4()}"):
        first = text(client.chat.completions.create(**ask("Tell me about your warranty."), stream=True))
        settle(gate)
        with client.chat.completions.with_streaming_response.create(**ask("tell me about your warranty please"),
                                                                    stream=True) as again:
            assert served_by(again) == "semantic"
            replayed = text(again.parse())
    assert first and replayed == first and fake_openai.counters(MODEL).requests == 1
    gate.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_async_lookups_and_stores(fake_openai: FakeOpenAI, store: str | None) -> None:
    gate = semantic_gate(fake_openai.base_url, store)

    async def main() -> str | None:
        client = gate.async_openai(api_key="sk-fake", max_retries=0)
        with gate.scope(user=f"u-{uuid.uuid4()}"):
            await client.chat.completions.create(**ask("Do you ship to Canada?"))
            await asyncio.to_thread(settle, gate)
            answer = await client.chat.completions.with_raw_response.create(**ask("do you ship to Canada"))
        return served_by(answer)

    assert asyncio.run(main()) == "semantic" and fake_openai.counters(MODEL).requests == 1
    gate.close()


_OTHER_POD = """
import sys, time, uuid
import fleetgate as fg
from fleetgate.cache import LocalEmbedder
base_url, redis_url, user = sys.argv[1:4]
gate = fg.Gateway(base_url=base_url, redis_url=redis_url, embedder=LocalEmbedder(),
                  cache={"enabled": True, "semantic": {"enabled": True}})
gate.cache.semantic.embedder.embed(["warm up"])
assert gate.cache.semantic.ready.wait(30)
client = gate.openai(api_key="sk-fake", max_retries=0)
print("ready", len(gate.cache.semantic), flush=True)
for line in sys.stdin:
    time.sleep(float(line))
    with gate.scope(user=user):
        answer = client.chat.completions.with_raw_response.create(
            model="gpt-4.1-mini", temperature=0, messages=[{"role": "system", "content": "Answer briefly."},
                                                            {"role": "user", "content": "what time do you open on weekdays"}])
    print(answer.headers.get("x-fleetgate-cache"), flush=True)
gate.close()
"""


@pytest.mark.fake_openai(config=FakeConfig())
def test_another_process_sees_a_new_entry_within_a_second(fake_openai: FakeOpenAI, store_url: str) -> None:
    user = f"u-{uuid.uuid4()}"
    pod = subprocess.Popen([sys.executable, "-c", _OTHER_POD, fake_openai.base_url, store_url, user],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert pod.stdin is not None and pod.stdout is not None
    try:
        assert pod.stdout.readline().startswith("ready")
        gate = semantic_gate(fake_openai.base_url, store_url)
        with gate.scope(user=user):
            gate.openai(api_key="sk-fake", max_retries=0).chat.completions.create(
                **ask("What time do you open on weekdays?"))
        settle(gate)  # journaled: the other pod has a second from here
        pod.stdin.write("1.0\n")
        pod.stdin.flush()
        assert pod.stdout.readline().strip() == "semantic"
        assert fake_openai.counters(MODEL).requests == 1
        # A pod started now warms its index from the journal.
        late = semantic_gate(fake_openai.base_url, store_url)
        assert late.cache.semantic is not None and late.cache.semantic.ready.wait(30)
        with late.scope(user=user):
            answer = late.openai(api_key="sk-fake", max_retries=0).chat.completions.with_raw_response.create(
                **ask("when do you open on weekdays"))
        assert served_by(answer) == "semantic" and fake_openai.counters(MODEL).requests == 1
        gate.close()
        late.close()
    finally:
        pod.stdin.close()
        assert pod.wait(timeout=30) == 0


def remember_on_disk(url: str, tmp_path: Path, question: str) -> Path:
    """The file of an embedded semantic cache that answered `question` (for user ana)."""
    path = tmp_path / "semantic.jsonl"
    gate = semantic_gate(url, path=str(path))
    with gate.scope(user="ana"):
        gate.openai(api_key="sk-fake", max_retries=0).chat.completions.create(**ask(question))
    settle(gate)
    gate.close()
    return path


@pytest.mark.fake_openai(config=FakeConfig())
def test_embedded_entries_and_answers_survive_a_restart_on_disk(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    path = remember_on_disk(fake_openai.base_url, tmp_path, "Can I pay by invoice?")
    restarted = semantic_gate(fake_openai.base_url, path=str(path))
    with restarted.scope(user="ana"):
        answer = restarted.openai(api_key="sk-fake", max_retries=0).chat.completions.with_raw_response.create(
            **ask("can I pay with an invoice"))
    assert served_by(answer) == "semantic" and fake_openai.counters(MODEL).requests == 1
    restarted.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_entries_of_another_embedder_are_not_compared(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    path = remember_on_disk(fake_openai.base_url, tmp_path, "Can I pay by invoice?")

    class Renamed(LocalEmbedder):
        name = "another-model"

    other = fg.Gateway(base_url=fake_openai.base_url, embedder=Renamed(),
                       cache={"enabled": True, "semantic": {"enabled": True, "path": str(path)}})
    assert other.cache.semantic is not None and len(other.cache.semantic) == 0
    assert other.stats["semantic_other_embedder"] == 1
    other.close()


@pytest.mark.fake_openai(config=FakeConfig())
def test_openai_embeddings_through_the_gateway(fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-fake")
    # The fake's embeddings hash the text, so only the same prompt matches: the exact
    # layer is kept per user and the semantic one shared, so that the same prompt from
    # another user can only be served by meaning.
    gate = fg.Gateway(base_url=fake_openai.base_url, cache={
        "enabled": True, "namespace": "user",
        "semantic": {"enabled": True, "embedder": "openai:text-embedding-3-small", "namespace": "global"}})
    client = gate.openai(api_key="sk-fake", max_retries=0)
    with gate.scope(user="ana"):
        client.chat.completions.create(**ask("Opening hours?"))
    settle(gate)
    with gate.scope(user="ben"):
        answer = client.chat.completions.with_raw_response.create(**ask("Opening hours?"))
    assert gate.cache.semantic is not None and gate.cache.semantic.embedder.name == "openai:text-embedding-3-small"
    assert fake_openai.counters("text-embedding-3-small").requests == 2  # stored, then looked up
    assert served_by(answer) == "semantic" and fake_openai.counters(MODEL).requests == 1
    gate.close()


@pytest.mark.parametrize("pairs", [PAIRS, HELD_OUT], ids=["pairs", "held-out"])
def test_the_evaluation_meets_its_bounds_at_the_defaults(pairs: Path) -> None:
    result = CliRunner().invoke(cli, ["cache", "evaluate", str(pairs)])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.split()[:1]
            and line.split()[0] in ("paraphrase", "negation", "entity", "number", "date", "scope")}
    assert set(rows) == {"paraphrase", "negation", "entity", "number", "date", "scope"}
    assert "should-hit served" in rows["paraphrase"] and "traps served" in rows["negation"]


def test_the_evaluation_fails_when_traps_leak(tmp_path: Path) -> None:
    """With a threshold that lets everything through, the traps reach the bound's check."""
    result = CliRunner().invoke(cli, ["cache", "evaluate", str(PAIRS), "--threshold", "0.5"])
    assert result.exit_code == 1 and "over the bound" in result.output


def test_the_evaluation_fails_when_the_guards_are_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """At the default threshold, similarity alone serves traps: the guards are what keep
    them out."""
    monkeypatch.setattr("fleetgate.cache.semantic.near_miss", lambda a, b: None)
    result = CliRunner().invoke(cli, ["cache", "evaluate", str(PAIRS)])
    assert result.exit_code == 1, result.output
    over = [line.split()[0] for line in result.output.splitlines() if "over the bound" in line]
    assert "negation" in over or "number" in over, result.output


def test_the_pairs_file_is_large_enough_and_well_formed() -> None:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    assert len(rows) >= 300 and len({r["id"] for r in rows}) == len(rows)
    assert {r["category"] for r in rows if r["expect"] == "miss"} == {"negation", "entity", "number", "date", "scope"}


@pytest.mark.parametrize(("a", "b", "why"), [
    ("Is aspirin safe for children?", "Is aspirin unsafe for children?", "negation"),
    ("Which foods contain gluten?", "Which foods don't contain gluten?", "negation"),
    ("Convert 5 miles to km", "Convert 50 miles to km", "number"),
    ("How many eggs for three people?", "How many eggs for four people?", "number"),
    ("What's on the calendar for Monday?", "What's on the calendar for Tuesday?", "date"),
    ("Sales report for Q3 2023", "Sales report for Q4 2023", "number"),
    ("How do I enable dark mode?", "How do I disable dark mode?", "scope"),
    ("How do I convert PDF to Word?", "How do I convert Word to PDF?", "scope"),
    ("How do I sort a column from A to Z?", "How do I sort a column from Z to A?", "scope"),
    ("How do I mute a participant in Teams?", "How do I mute all participants in Teams?", "scope"),
    ("How do I deploy to Heroku?", "How do I deploy to Netlify?", "entity"),
    ("What is the capital of France?", "what's france's capital", None),
    ("How do I exit vim?", "how can I exit vim", None),
])
def test_guards(a: str, b: str, why: str | None) -> None:
    assert near_miss(Prompt.of(a), Prompt.of(b)) == why
    assert near_miss(Prompt.of(b), Prompt.of(a)) == why


def test_names_are_capitalised_words_away_from_a_sentence_or_line_start() -> None:
    assert Prompt.of("Ship it today\nParis is nice, said Anna of the NASA team").names == {"anna", "nasa"}
    assert Prompt.of("we met Anna. Then Bob left").names == {"anna", "bob"}  # not "Then"


def test_local_embeddings_are_unit_vectors_that_rank_paraphrases_first() -> None:
    v = EMBEDDER.embed(["How do I reset my password?", "how can I reset my password", "Best pizza in Naples?"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert float(v[0] @ v[1]) > 0.9 > float(v[0] @ v[2])


@pytest.mark.fake_openai(config=FakeConfig())
def test_the_size_cap_evicts_the_oldest_entries(fake_openai: FakeOpenAI) -> None:
    gate = semantic_gate(fake_openai.base_url, max_entries=2)
    client = gate.openai(api_key="sk-fake", max_retries=0)
    questions = ["Do you sell gift cards?", "Can I pick up my order in store?", "Is there a student discount?"]
    with gate.scope(user="ana"):
        for question in questions:
            client.chat.completions.create(**ask(question))
        settle(gate)
        assert gate.cache.semantic is not None
        assert [prompt for _, prompt in gate.cache.semantic.entries()] == questions[1:]
        oldest = client.chat.completions.with_raw_response.create(**ask("do you sell gift cards"))
        newest = client.chat.completions.with_raw_response.create(**ask("is there a student discount"))
    assert served_by(oldest) is None and served_by(newest) == "semantic"
    gate.close()

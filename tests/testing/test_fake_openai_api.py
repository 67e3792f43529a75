"""The fake server, driven only through the real openai SDK."""

from __future__ import annotations

import asyncio
import base64
import struct

import openai
import pytest

from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI


def client(fake: FakeOpenAI, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", **kwargs)  # type: ignore[arg-type]


def test_chat_completion_with_usage_and_headers(fake_openai: FakeOpenAI) -> None:
    raw = client(fake_openai).chat.completions.with_raw_response.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "How do I reset my password?"}], max_tokens=100
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    for name in ("limit-requests", "limit-tokens", "remaining-requests", "remaining-tokens",
                 "reset-requests", "reset-tokens"):
        assert raw.headers[f"x-ratelimit-{name}"]
    assert raw.headers["x-request-id"].startswith("req_")
    # Tokens per minute count the prompt estimate plus max_tokens, as OpenAI counts them.
    counters = fake_openai.counters("gpt-4.1-mini")
    assert counters.requests == 1 and counters.tokens_admitted == completion.usage.prompt_tokens + 100


def test_content_is_deterministic(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    ask = lambda q: c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": q}])  # noqa: E731
    assert ask("same question").choices[0].message.content == ask("same question").choices[0].message.content
    assert ask("same question").choices[0].message.content != ask("another one").choices[0].message.content


def test_max_tokens_cuts_the_answer(fake_openai: FakeOpenAI) -> None:
    r = client(fake_openai).chat.completions.create(
        model="gpt-4.1", messages=[{"role": "user", "content": "long please"}], max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length"


def test_long_prompts_seen_again_report_cached_tokens(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    prompt = "policy text " * 600  # about 1,800 tokens
    first = c.responses.create(model="gpt-4.1", input=prompt)
    second = c.responses.create(model="gpt-4.1", input=prompt)
    assert first.usage is not None and second.usage is not None
    assert first.usage.input_tokens_details.cached_tokens == 0
    assert second.usage.input_tokens_details.cached_tokens == (second.usage.input_tokens // 128) * 128 > 0


def test_responses(fake_openai: FakeOpenAI) -> None:
    r = client(fake_openai).responses.create(model="gpt-4.1-mini", instructions="Be brief.", input="Hello")
    assert r.status == "completed" and r.output_text
    assert r.usage is not None and r.usage.output_tokens > 0


def test_embeddings_same_text_same_vector(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    result = c.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta", "alpha"])
    vectors = [d.embedding for d in result.data]
    assert len(vectors[0]) == 256 and vectors[0] == vectors[2] != vectors[1]
    assert abs(sum(v * v for v in vectors[0]) - 1.0) < 1e-3
    floats = c.embeddings.create(model="text-embedding-3-small", input="alpha", encoding_format="float",
                                 dimensions=64)
    assert len(floats.data[0].embedding) == 64


def test_embeddings_base64_is_little_endian_float32(fake_openai: FakeOpenAI) -> None:
    raw = client(fake_openai).embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="x", encoding_format="base64", dimensions=8)
    encoded = raw.http_response.json()["data"][0]["embedding"]
    values = struct.unpack("<8f", base64.b64decode(encoded))
    assert abs(sum(v * v for v in values) - 1.0) < 1e-4


def test_chat_stream_ends_like_the_api_with_usage(fake_openai: FakeOpenAI) -> None:
    stream = client(fake_openai).chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "stream it"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices == [] and chunks[-1].usage is not None
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    whole = client(fake_openai).chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "stream it"}])
    assert text == whole.choices[0].message.content


def test_chat_stream_without_usage_has_none(fake_openai: FakeOpenAI) -> None:
    chunks = list(client(fake_openai).chat.completions.create(
        model="gpt-4.1-mini", messages=[{"role": "user", "content": "x"}], stream=True))
    assert all(c.usage is None for c in chunks)


def test_responses_stream(fake_openai: FakeOpenAI) -> None:
    with client(fake_openai).responses.stream(model="gpt-4.1-mini", input="stream please") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    assert final.output_text and final.usage is not None


def test_models(fake_openai: FakeOpenAI) -> None:
    assert "gpt-4.1-mini" in {m.id for m in client(fake_openai).models.list()}


def test_bad_requests_get_openai_error_bodies(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai, max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        c.chat.completions.create(model="gpt-4.1", messages=[])
    assert caught.value.status_code == 400 and "messages" in caught.value.message
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "x"}], max_tokens=0)


def test_async_client(fake_openai: FakeOpenAI) -> None:
    async def main() -> list[str]:
        c = openai.AsyncOpenAI(base_url=fake_openai.base_url, api_key="sk-fake")
        results = await asyncio.gather(*(
            c.chat.completions.create(model="gpt-4.1-nano", messages=[{"role": "user", "content": f"q{i}"}])
            for i in range(20)))
        return [r.choices[0].message.content or "" for r in results]

    assert len(set(asyncio.run(main()))) > 1
    assert fake_openai.counters("gpt-4.1-nano").requests == 20


def test_context_manager_frees_the_port() -> None:
    with FakeOpenAI(FakeConfig(seed=3)) as fake:
        url = fake.base_url
        assert client(fake).models.list()
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=url, api_key="sk-fake", max_retries=0).models.list()


def test_command_line_server(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import re
    import signal
    import subprocess
    import sys

    config = tmp_path / "fake.toml"
    config.write_text('[models."cli-model"]\nrequests_per_minute = 120\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetgate.cli", "fake-openai", "--port", "0", "--config", str(config)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        match = re.search(r"(http://\S+/v1)", proc.stdout.readline())
        assert match, "the server prints its URL"
        raw = openai.OpenAI(base_url=match.group(1), api_key="sk-fake").chat.completions.with_raw_response.create(
            model="cli-model", messages=[{"role": "user", "content": "hi"}])
        assert raw.headers["x-ratelimit-limit-requests"] == "120"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_command_line_rejects_a_bad_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from click.testing import CliRunner

    from fleetgate.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text("seed = 'seven'\n")
    result = CliRunner().invoke(main, ["fake-openai", "--config", str(bad)])
    assert result.exit_code == 2 and "seed" in result.output

"""The fake server's limits and faults, as the openai SDK experiences them."""

from __future__ import annotations

import time

import httpx2
import openai
import pytest

import fleetgate as fg
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency, ModelLimits, load_config

MSG = [{"role": "user", "content": "hello"}]


def client(fake: FakeOpenAI, **kwargs: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", **kwargs)  # type: ignore[arg-type]


@pytest.mark.fake_openai(config=FakeConfig(models={"slow": ModelLimits(requests_per_minute=60)}))
def test_a_429_carries_what_the_sdk_needs_and_the_sdk_waits(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai, max_retries=0)
    c.chat.completions.create(model="slow", messages=MSG)
    with pytest.raises(openai.RateLimitError) as caught:
        c.chat.completions.create(model="slow", messages=MSG)
    error = caught.value
    assert error.code == "rate_limit_exceeded"
    headers = error.response.headers
    assert 0 < int(headers["retry-after-ms"]) <= 1000 and headers["retry-after"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "59", "a refused request takes nothing"
    assert headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
    # With retries on, the SDK honours retry-after-ms and gets through.
    r = client(fake_openai, max_retries=2).chat.completions.create(model="slow", messages=MSG)
    assert r.choices[0].message.content
    counters = fake_openai.counters("slow")
    assert counters.requests == 4 and counters.rate_limited == 2


@pytest.mark.fake_openai(config=FakeConfig(models={"m": ModelLimits(requests_per_minute=600, tokens_per_minute=60_000)}))
def test_a_client_that_ignores_limits_gets_429s_beyond_the_allowance(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai, max_retries=0)
    admitted, refused = 0, 0
    start = time.monotonic()
    for _ in range(60):
        try:
            c.chat.completions.create(model="m", messages=MSG)
            admitted += 1
        except openai.RateLimitError:
            refused += 1
    elapsed = time.monotonic() - start
    assert refused > 0
    assert admitted <= 10 * elapsed + 10  # 10 per second, a one-second slice of burst


@pytest.mark.fake_openai(config=FakeConfig(models={"m": ModelLimits(requests_per_minute=600, tokens_per_minute=60_000)}))
def test_a_client_that_paces_itself_gets_none(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai, max_retries=0)
    limiter = fg.Limiter()
    # 95% of the upstream limit: latency jitter between deciding and arriving needs a margin.
    quota = fg.Quota("m", requests_per_minute=570, tokens_per_minute=57_000)
    for _ in range(40):
        decision = limiter.acquire(quota, tokens=100, timeout=10)
        r = c.chat.completions.create(model="m", messages=MSG, max_tokens=90)  # about 94 tokens counted
        assert decision.reservation is not None and r.usage is not None
    assert fake_openai.counters("m").rate_limited == 0
    assert fake_openai.counters("m").requests == 40


@pytest.mark.fake_openai(config=FakeConfig(models={"t": ModelLimits(tokens_per_minute=6_000)}))
def test_tokens_count_prompt_plus_maximum_output(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai, max_retries=2)
    # 100 tokens per one-second slice: a larger request goes through on a full slice...
    assert c.chat.completions.create(model="t", messages=MSG, max_tokens=200).choices
    with pytest.raises(openai.RateLimitError):  # ...and the next one waits for the debt
        client(fake_openai, max_retries=0).chat.completions.create(model="t", messages=MSG, max_tokens=10)
    # More than the whole minute's tokens can never pass; the SDK is told not to retry.
    with pytest.raises(openai.RateLimitError, match="Request too large") as caught:
        c.chat.completions.create(model="t", messages=MSG, max_tokens=7_000)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert fake_openai.counters("t").requests == 3, "the SDK did not retry the request that cannot fit"


FAULTS = FakeConfig(faults=[
    Fault(kind="error", model="broken", status=503),
    Fault(kind="insufficient_quota", model="broke"),
    Fault(kind="timeout", model="hangs", latency=Latency(ms=2_000)),
    Fault(kind="reset", model="resets"),
    Fault(kind="cut_stream", model="cuts"),
    Fault(kind="malformed_json", model="garbled"),
    Fault(kind="markdown_fence", model="fenced"),
    Fault(kind="latency", model="laggy", latency=Latency(kind="uniform", ms=20, spread=40)),
    Fault(kind="error", model="later", status=500, start=3600),
])


@pytest.mark.fake_openai(config=FAULTS)
def test_injected_faults(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai, max_retries=0)
    with pytest.raises(openai.InternalServerError) as server_error:
        c.chat.completions.create(model="broken", messages=MSG)
    assert server_error.value.status_code == 503
    with pytest.raises(openai.RateLimitError) as quota:
        c.chat.completions.create(model="broke", messages=MSG)
    assert quota.value.code == "insufficient_quota"
    with pytest.raises(openai.APITimeoutError):
        client(fake_openai, max_retries=0, timeout=0.3).chat.completions.create(model="hangs", messages=MSG)
    with pytest.raises(openai.APIConnectionError):
        c.chat.completions.create(model="resets", messages=MSG)
    # The stream breaks off: newer openai releases wrap the transport's error as an
    # APIError; openai 3.0 (fleetgate's lower bound) lets httpx2's RemoteProtocolError through.
    with pytest.raises((openai.APIError, httpx2.RemoteProtocolError)):
        list(c.chat.completions.create(model="cuts", messages=MSG, stream=True))
    with pytest.raises(ValueError):  # the body is cut off half-way through its JSON
        c.chat.completions.create(model="garbled", messages=MSG)
    fenced = c.chat.completions.create(model="fenced", messages=MSG).choices[0].message.content or ""
    assert fenced.startswith("```json\n") and fenced.endswith("\n```")
    assert c.chat.completions.create(model="laggy", messages=MSG).choices
    assert c.chat.completions.create(model="later", messages=MSG).choices, "that fault starts in an hour"
    assert fake_openai.counters("broken").faults == {"error": 1}
    assert fake_openai.counters("laggy").faults == {"latency": 1}


def test_probabilistic_faults_follow_the_seed() -> None:
    def outcomes(seed: int) -> list[bool]:
        config = FakeConfig(seed=seed, faults=[Fault(kind="error", model="flaky", probability=0.5)])
        with FakeOpenAI(config) as fake:
            c = client(fake, max_retries=0)
            seen = []
            for _ in range(40):
                try:
                    c.chat.completions.create(model="flaky", messages=MSG)
                    seen.append(True)
                except openai.InternalServerError:
                    seen.append(False)
            return seen

    first = outcomes(7)
    assert 5 < first.count(False) < 35, "about half the requests fail"
    assert outcomes(7) == first, "the same seed fails the same requests"
    assert outcomes(8) != first


def test_config_files_and_their_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "fake.toml"
    path.write_text('seed = 4\n[models."gpt-4.1"]\nrequests_per_minute = 500\n[[faults]]\nkind = "error"\nstatus = 502\n')
    config = load_config(path)
    assert config.limits_for("gpt-4.1").requests_per_minute == 500 and config.faults[0].status == 502
    path.write_text("[[faults]]\nkind = \"error\"\nstart = 5\nend = 1\n")
    with pytest.raises(ValueError, match="end"):
        load_config(path)
    path.write_text("sed = 4\n")
    with pytest.raises(ValueError, match="sed"):
        load_config(path)

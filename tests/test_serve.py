"""``fleetgate serve``: the gateway as an OpenAI-compatible server, run as its command runs
it (a process of its own, uvicorn), called with the real ``openai`` SDK (sync and async,
both kinds of stream), with raw HTTP from Node.js and curl, and operated: keys issued,
scoped and revoked, refusals in OpenAI's shape, size limits, health and readiness probes,
metrics, and a graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import pytest

from fleetgate.serve.keys import key_hash, new_key
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency, ModelLimits
from tests.polling import until

MODEL = "gpt-4.1-mini"
UPSTREAM_KEY = "sk-upstream-held-by-the-server"
FLEETGATE = str(Path(sys.executable).with_name("fleetgate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(tmp_path: Path, config: str, *args: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`fleetgate serve` with `config` (TOML) on a free loopback port, until it is ready:
    its base URL (``http://127.0.0.1:PORT``) and its process; stopped with SIGTERM
    afterwards (its output in ``serve-PORT.log``, shown if it exits early)."""
    port = free_port()
    path, log = tmp_path / f"serve-{port}.toml", tmp_path / f"serve-{port}.log"
    path.write_text(config)
    with log.open("wb") as out:
        process = subprocess.Popen([FLEETGATE, "serve", "--config", str(path), "--port", str(port), *args],
                                   env={**os.environ, "OPENAI_API_KEY": UPSTREAM_KEY}, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"fleetgate serve exited {process.returncode}: {log.read_text()}")
        try:
            return httpx2.get(f"{url}/readyz", timeout=5).status_code == 200
        except httpx2.TransportError:
            return False
    try:
        until(ready)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()


@contextlib.contextmanager
def served(tmp_path: Path, config: str, *args: str) -> Iterator[str]:
    """:func:`serving`'s base URL."""
    with serving(tmp_path, config, *args) as (url, _):
        yield url


def keyed(fake: FakeOpenAI, key: str, **lines: str) -> str:
    """A config: `fake` upstream, one key (its scope and models in `lines`)."""
    extra = "".join(f"{name} = {value}\n" for name, value in lines.items())
    return (f'base_url = "{fake.base_url}"\n[[serve.keys]]\nname = "svc"\nhash = "{key_hash(key)}"\n{extra}')


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(FakeConfig(answer_words=6, api_key=UPSTREAM_KEY)) as fake:
        yield fake


@pytest.fixture(scope="module")
def server(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """One server for the SDK tests: its URL, and a key that may call MODEL only."""
    key = new_key()
    config = keyed(upstream, key, user='"u-1"', feature='"support"', models=f'["{MODEL}", "text-embedding-3-small"]')
    config += "[features.support]\nrequests_per_minute = 100000\n"  # a known feature: labelled in metrics
    with served(tmp_path_factory.mktemp("serve"), config) as url:
        yield url, key


def test_the_sdk_calls_every_endpoint_through_the_server(server: tuple[str, str], upstream: FakeOpenAI) -> None:
    url, key = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert raw.parse().choices[0].message.content and raw.headers["x-fleetgate-tier"] == "primary"
    assert client.responses.create(model=MODEL, input="hello", max_output_tokens=16).output_text
    assert len(client.embeddings.create(model="text-embedding-3-small", input=["a", "b"]).data) == 2
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and any(c.choices and c.choices[0].delta.content for c in chunks)
    events = [e.type for e in client.responses.create(model=MODEL, input="hello", stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    uploaded = client.files.create(file=("in.jsonl", b'{"custom_id": "1"}\n'), purpose="batch")
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    # The caller's key never reaches upstream, which takes only the server's (the fake
    # refuses any other), and no answer carries the server's key.
    assert upstream.counters(MODEL).unauthorized == 0
    assert UPSTREAM_KEY not in raw.http_response.text and UPSTREAM_KEY not in str(raw.headers)


def test_the_async_sdk_streams_through_the_server(server: tuple[str, str]) -> None:
    url, key = server

    async def main() -> tuple[int, list[str]]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
            chat = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                        stream=True)
            deltas = [c async for c in chat]
            stream = await client.responses.create(model=MODEL, input="hello", stream=True)
            return len(deltas), [e.type async for e in stream]
    deltas, events = asyncio.run(main())
    assert deltas > 2 and events[-1] == "response.completed"


def test_keys_are_checked_and_scope_their_calls(server: tuple[str, str]) -> None:
    url, key = server
    with pytest.raises(openai.AuthenticationError, match="not one this fleet issued"):
        openai.OpenAI(base_url=f"{url}/v1", api_key=new_key(), max_retries=0).models.list()
    keyless = httpx2.get(f"{url}/v1/models")
    assert keyless.status_code == 401 and "Bearer fgk-" in keyless.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="may not call 'gpt-4.1'"):
        client.chat.completions.create(model="gpt-4.1", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.PermissionDeniedError, match="makes no batches|make batches with a key"):
        client.batches.create(input_file_id="file-any", endpoint="/v1/chat/completions", completion_window="24h")
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    metrics = httpx2.get(f"{url}/metrics").text
    assert 'feature="support"' in metrics, "the key's feature does not scope its calls"
    assert "u-1" not in metrics, "a raw user id reached the metrics"


def test_a_body_over_the_limit_is_refused_before_it_is_read_whole(tmp_path: Path, upstream: FakeOpenAI) -> None:
    key = new_key()
    with served(tmp_path, keyed(upstream, key) + "[serve]\nmax_request_bytes = 2048\n") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.APIStatusError, match="max_request_bytes") as refused:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * 4096}])
    assert refused.value.status_code == 413


def test_the_gateways_refusal_reaches_the_caller_in_openais_shape(tmp_path: Path, upstream: FakeOpenAI) -> None:
    """A user quota of one request a minute: the second call is refused by the gateway
    (429, ``x-should-retry: false``, the quota named), not sent upstream."""
    key = new_key()
    config = "default_deadline_seconds = 5\n" + keyed(upstream, key, user='"u-tight"') + \
        "[per_user]\nrequests_per_minute = 1\n"
    with served(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "one"}])
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "two"}])
        response = refused.value.response
    assert response.headers["x-should-retry"] == "false" and response.headers["x-fleetgate"] == "refused"
    assert "u-tight" not in response.text, "a raw user id reached a refusal"


def test_keys_made_in_redis_work_across_servers_until_revoked(tmp_path: Path, upstream: FakeOpenAI,
                                                               redis_url: str) -> None:
    from click.testing import CliRunner

    from fleetgate.cli import main

    name = f"svc-{os.getpid()}-{time.monotonic_ns()}"
    made = CliRunner().invoke(main, ["keys", "create", name, "--user", "u-9", "--model", MODEL, "--redis", redis_url])
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key.startswith("fgk-")
    listed = CliRunner().invoke(main, ["keys", "list", "--redis", redis_url]).output
    assert name in listed and key not in listed
    config = f'base_url = "{upstream.base_url}"\nredis_url = "{redis_url}"\n[serve]\nkey_cache_seconds = 0\n'
    with served(tmp_path, config) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)
        assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]).choices
        revoked = CliRunner().invoke(main, ["keys", "revoke", name, "--redis", redis_url])
        assert revoked.exit_code == 0, revoked.output
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def test_pass_through_sends_the_callers_key_and_scopes_by_its_headers(tmp_path: Path) -> None:
    with FakeOpenAI(FakeConfig(answer_words=4, api_key="sk-callers-own")) as fake:
        config = (f'base_url = "{fake.base_url}"\n[serve]\nauth = "pass_through"\n'
                  '[features.nightly-report]\nrequests_per_minute = 100000\n')
        with served(tmp_path, config) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-callers-own", max_retries=0,
                                   default_headers={"x-fleetgate-feature": "nightly-report"})
            assert client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}]).choices
            metrics = httpx2.get(f"{url}/metrics").text
    assert fake.counters(MODEL).unauthorized == 0 and 'feature="nightly-report"' in metrics


def test_probes_and_metrics(server: tuple[str, str]) -> None:
    url, _ = server
    assert httpx2.get(f"{url}/healthz").text == "ok\n"
    assert httpx2.get(f"{url}/readyz").status_code == 200
    assert "fleetgate_requests_total" in httpx2.get(f"{url}/metrics").text
    missing = httpx2.get(f"{url}/elsewhere")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_sigterm_lets_the_calls_in_flight_finish(tmp_path: Path) -> None:
    slow = FakeConfig(answer_words=4, api_key=UPSTREAM_KEY,
                      faults=[Fault(kind="latency", latency=Latency(ms=1500))])
    key = new_key()
    with FakeOpenAI(slow) as fake, \
            serving(tmp_path, keyed(fake, key) + "[serve]\ndrain_seconds = 30\n") as (url, process):
        answers: list[str] = []
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
        caller = threading.Thread(target=lambda: answers.append(client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "slow"}]).choices[0].message.content or ""))
        caller.start()
        until(lambda: fake.counters(MODEL).requests >= 1)  # upstream has it, and holds it 1.5 s
        assert not answers, "answered before the shutdown: nothing was in flight"
        process.send_signal(signal.SIGTERM)
        caller.join(timeout=60)
        process.wait(timeout=60)
    assert answers and answers[0], "the call in flight was cut by the shutdown"


def test_node_calls_the_server_with_raw_http(server: tuple[str, str]) -> None:
    """Another language's plain HTTP client (Node.js's fetch): an answer, a stream of
    server-sent events, and a refusal, as OpenAI's API gives them."""
    url, key = server
    script = f"""
const base = {json.dumps(url + "/v1")}, key = {json.dumps(key)};
const ask = (body) => fetch(base + "/chat/completions", {{method: "POST",
  headers: {{"authorization": "Bearer " + key, "content-type": "application/json"}}, body: JSON.stringify(body)}});
(async () => {{
  const one = await ask({{model: "{MODEL}", messages: [{{role: "user", content: "hi"}}]}});
  const answer = await one.json();
  const stream = await ask({{model: "{MODEL}", messages: [{{role: "user", content: "hi"}}], stream: true}});
  const events = (await stream.text()).split("\\n\\n").filter((e) => e.startsWith("data: "));
  const refused = await ask({{model: "gpt-4.1", messages: [{{role: "user", content: "hi"}}]}});
  console.log(JSON.stringify({{status: one.status, content: answer.choices[0].message.content,
    tier: one.headers.get("x-fleetgate-tier"), events: events.length, last: events[events.length - 1],
    refused: refused.status, code: (await refused.json()).error.code}}));
}})();
"""
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
    seen = json.loads(out)
    assert seen["status"] == 200 and seen["content"] and seen["tier"] == "primary"
    assert seen["events"] > 2 and seen["last"] == "data: [DONE]"
    assert seen["refused"] == 403 and seen["code"] == "model_not_allowed"


def test_curl_calls_the_server(server: tuple[str, str]) -> None:
    url, key = server
    out = subprocess.run(["curl", "-sS", f"{url}/v1/chat/completions", "-H", f"Authorization: Bearer {key}",
                          "-H", "Content-Type: application/json",
                          "-d", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out)["choices"][0]["message"]["content"]


def test_several_workers_share_one_quota_through_redis(tmp_path: Path, upstream: FakeOpenAI, redis_url: str) -> None:
    """Two worker processes, one user quota of 5 requests a minute kept in Redis: the
    calls they let through together are the five that one quota allows (a quota each
    would let ten through), and their metrics are gathered on one page."""
    key = new_key()
    user = f"u-workers-{time.monotonic_ns()}"  # a quota of its own in the shared Redis
    config = (f'redis_url = "{redis_url}"\ndefault_deadline_seconds = 0.2\n'
              + keyed(upstream, key, user=f'"{user}"') + "[per_user]\nrequests_per_minute = 5\n")
    with serving(tmp_path, config, "--workers", "2") as (url, process):
        until(lambda: len(workers_of(process.pid)) == 2)

        async def main() -> list[int]:
            async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
                async def one() -> int:
                    try:
                        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
                    except openai.RateLimitError:
                        return 429
                    return 200
                return list(await asyncio.gather(*(one() for _ in range(24))))
        statuses = asyncio.run(main())
        metrics = httpx2.get(f"{url}/metrics").text
    assert statuses.count(200) == 5 and statuses.count(429) == 19, statuses
    assert "fleetgate_requests_total" in metrics


def workers_of(pid: int) -> list[int]:
    """The worker processes uvicorn's supervisor `pid` runs (spawned by multiprocessing)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_several_workers_without_redis_are_refused(tmp_path: Path, upstream: FakeOpenAI) -> None:
    path = tmp_path / "no-redis.toml"
    path.write_text(keyed(upstream, new_key()))
    done = subprocess.run([FLEETGATE, "serve", "--config", str(path), "--workers", "2", "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "set redis_url" in done.stderr


def test_a_caller_that_leaves_mid_body_sends_nothing_upstream() -> None:
    """The ASGI application itself: a request whose caller disconnects before its body is
    whole is not sent upstream, and nothing is answered."""
    import fleetgate as fg
    from fleetgate.serve import ServeApp

    key = new_key()
    with FakeOpenAI(FakeConfig(answer_words=4, api_key=UPSTREAM_KEY)) as fake:
        gate = fg.Gateway(base_url=fake.base_url, serve={"keys": [{"name": "svc", "hash": key_hash(key)}]})
        app = ServeApp(gate)
        messages: list[dict[str, object]] = [
            {"type": "http.request", "body": b'{"model": "gpt-4.1-mini", "mess', "more_body": True},
            {"type": "http.disconnect"}]
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return messages.pop(0)

        async def send(message: dict[str, object]) -> None:
            sent.append(message)
        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": b"",
                 "headers": [(b"authorization", f"Bearer {key}".encode()), (b"content-type", b"application/json")]}
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
        gate.close()
    assert sent == [] and fake.counters(MODEL).requests == 0


def test_a_key_printed_for_a_config_loads_as_one() -> None:
    """``fleetgate keys create --print``: the key, and a ``[[serve.keys]]`` entry the config
    takes as it is, listing the key by its hash and nothing else."""
    import tomllib

    from click.testing import CliRunner

    from fleetgate.cli import main
    from fleetgate.config import GatewayConfig

    printed = CliRunner().invoke(main, ["keys", "create", "svc-print", "--user", 'u "7"', "--model", MODEL,
                                        "--model", "gpt-4.1", "--print"])
    assert printed.exit_code == 0, printed.output
    first, _, entry = printed.output.partition("\n\n")
    key = first.removeprefix("key: ")
    [listed] = GatewayConfig(serve=tomllib.loads(entry)["serve"]).serve.keys
    assert key.startswith("fgk-") and key not in entry and listed.hash == key_hash(key)
    assert (listed.name, listed.user, listed.team, listed.models) == ("svc-print", 'u "7"', None, [MODEL, "gpt-4.1"])

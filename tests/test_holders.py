"""Files, batches and stored responses stay with the deployment that holds them
(``[deployments]``), through the real SDK: made where the caller asks, found again from
another pod through Redis, looked for when the fleet does not know them, and a batch job
kept on one deployment of its model from upload to collection."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import fleetgate as fg
from fleetgate.testing.fake_openai import AzureShape, FakeConfig, FakeOpenAI
from fleetgate.testing.fake_openai.config import BatchTimings
from tests.polling import until

MODEL = "gpt-4.1-mini"
QUICK = BatchTimings(validating_seconds=0.02, finalizing_seconds=0.02, cancelling_seconds=0.05)
FOR_MODEL = {"x-fleetgate-model": MODEL}


@contextlib.contextmanager
def three_fakes() -> Iterator[tuple[FakeOpenAI, FakeOpenAI, FakeOpenAI]]:
    """The client's own base URL, and two deployments of MODEL."""
    with FakeOpenAI(FakeConfig(batch=QUICK)) as base, FakeOpenAI(FakeConfig(batch=QUICK)) as first, \
            FakeOpenAI(FakeConfig(batch=QUICK)) as second:
        yield base, first, second


def gateway(base: FakeOpenAI, first: FakeOpenAI, second: FakeOpenAI, **settings: Any) -> fg.Gateway:
    return fg.Gateway(base_url=base.base_url, deployments={MODEL: [
        fg.ModelDeployment(name="first", base_url=first.base_url, priority=0),
        fg.ModelDeployment(name="second", base_url=second.base_url, priority=1)]}, **settings)


def batch_input(n: int) -> bytes:
    return "".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                               "body": {"model": MODEL, "messages": [{"role": "user", "content": f"q{i}"}],
                                        "max_tokens": 8}}) + "\n" for i in range(n)).encode()


def upload(client: openai.OpenAI, data: bytes, **headers: str) -> tuple[str, str]:
    """The id of `data` uploaded for a batch, and the deployment it went to."""
    raw = client.files.with_raw_response.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch",
                                                extra_headers=headers)
    return raw.parse().id, raw.headers.get("x-fleetgate-upstream", "")


def held_at(fake: FakeOpenAI) -> tuple[set[str], set[str]]:
    """The ids of the files and batches `fake` holds."""
    return {f["id"] for f in fake.files()}, {b["id"] for b in fake.batches()}


def test_a_batch_is_made_read_and_collected_where_its_file_was_uploaded(store_url: str) -> None:
    with three_fakes() as (base, first, second):
        gate = gateway(base, first, second, redis_url=store_url)
        client = gate.openai(api_key="sk-caller", max_retries=0)
        file_id, where = upload(client, batch_input(3), **FOR_MODEL)
        assert where == "first", "the upload did not go to the model's first deployment"
        raw = client.batches.with_raw_response.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                                      completion_window="24h")
        batch = raw.parse()
        assert raw.headers["x-fleetgate-upstream"] == "first", "the batch was not made where its file is"
        until(lambda: client.batches.retrieve(batch.id).status == "completed")
        done = client.batches.retrieve(batch.id)
        assert done.output_file_id is not None
        lines = client.files.content(done.output_file_id).text.splitlines()
        assert sorted(json.loads(x)["custom_id"] for x in lines) == ["r0", "r1", "r2"]
        assert client.files.retrieve(file_id).id == file_id
        client.files.delete(file_id)
        searches = gate.stats.snapshot().get("held_searches", 0)
        gate.close()
    assert searches == 0, "the ledger knew every object this pod made"
    assert held_at(base) == (set(), set()) and held_at(second) == (set(), set())
    files, batches = held_at(first)
    assert batches == {batch.id} and file_id not in files and done.output_file_id in files


def test_another_pod_finds_the_batch_through_the_fleets_ledger(store_url: str) -> None:
    with three_fakes() as (base, first, second):
        maker = gateway(base, first, second, redis_url=store_url)
        file_id, _ = upload(maker.openai(api_key="sk-caller", max_retries=0), batch_input(2),
                            **FOR_MODEL, **{"x-fleetgate-upstream": "second"})
        batch = maker.openai(api_key="sk-caller").batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        maker.chains.flush()
        maker.close()
        reader = gateway(base, first, second, redis_url=store_url)
        raw = reader.openai(api_key="sk-caller", max_retries=0).batches.with_raw_response.retrieve(batch.id)
        assert raw.parse().id == batch.id and raw.headers["x-fleetgate-upstream"] == "second"
        searches = reader.stats.snapshot().get("held_searches", 0)
        reader.close()
    assert searches == 0, "the other pod looked for the batch instead of reading where it is"
    assert held_at(second)[1] == {batch.id} and held_at(first) == (set(), set())


def test_an_object_the_fleet_does_not_know_is_looked_for_and_then_known() -> None:
    """A file uploaded to a deployment without the gateway: the first read looks for it
    (the client's base URL, then each deployment's place); the next one goes straight there."""
    with three_fakes() as (base, first, second):
        direct = openai.OpenAI(base_url=second.base_url, api_key="sk-caller")
        file_id = direct.files.create(file=("in.jsonl", io.BytesIO(batch_input(1))), purpose="batch").id
        gate = gateway(base, first, second)
        client = gate.openai(api_key="sk-caller", max_retries=0)
        raw = client.files.with_raw_response.retrieve(file_id)
        assert raw.parse().id == file_id and raw.headers["x-fleetgate-upstream"] == "second"
        assert client.files.retrieve(file_id).id == file_id
        stats = gate.stats.snapshot()
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve("file-nowhere")
        gate.close()
    assert stats.get("held_searches") == 1 and stats.get("held_found") == 1


def test_without_a_model_header_files_go_to_the_clients_base_url_and_a_wrong_name_is_refused() -> None:
    with three_fakes() as (base, first, second):
        gate = gateway(base, first, second)
        client = gate.openai(api_key="sk-caller", max_retries=0)
        file_id, where = upload(client, batch_input(1))
        assert where == "" and file_id in held_at(base)[0]
        with pytest.raises(openai.BadRequestError) as refused:
            upload(client, batch_input(1), **FOR_MODEL, **{"x-fleetgate-upstream": "nowhere"})
        gate.close()
    message = str(refused.value)
    assert "has no deployment 'nowhere'" in message and "first, second" in message


def test_a_background_response_is_read_and_cancelled_where_it_runs() -> None:
    """Made at the second deployment (the first refuses every call), a background response
    is read and cancelled there, though the client's base URL is elsewhere: known where it
    runs while this pod watches it, then to the ledger once it ended."""
    with three_fakes() as (base, first, second):
        first.revoke_key()
        gate = gateway(base, first, second)
        client = gate.openai(api_key="sk-caller", max_retries=0)
        answer = client.responses.with_raw_response.create(model=MODEL, input="hello", max_output_tokens=16,
                                                           background=True)
        made = answer.parse()
        raw = client.responses.with_raw_response.retrieve(made.id)  # while this pod watches it
        cancelled = client.responses.cancel(made.id)
        until(lambda: gate.background.pending() == 0)  # ended and settled: the ledger knows it
        after = client.responses.with_raw_response.retrieve(made.id)
        searches = gate.stats.snapshot().get("held_searches", 0)
        gate.close()
    assert answer.headers["x-fleetgate-upstream"] == "second"
    assert raw.headers["x-fleetgate-upstream"] == "second" and raw.parse().id == made.id
    assert cancelled.id == made.id and after.headers["x-fleetgate-upstream"] == "second"
    assert searches == 0, "a background response made here was looked for"


def test_a_batch_job_keeps_to_one_deployment_of_its_model(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(batch_input(40))
    with three_fakes() as (base, first, second):
        gate = gateway(base, first, second, batch={"directory": str(tmp_path / "state"), "poll_min_seconds": 0.02,
                                                   "poll_max_seconds": 0.2, "max_lines": 15})
        jobs = gate.batches(api_key="sk-caller")
        report = jobs.submit(src, name="pinned")
        summary = jobs.collect("pinned", tmp_path / "out.jsonl")
        answers = summary.output.read_text().splitlines()
        jobs.close()
        gate.close()
    assert report.done and report.succeeded == 40 and len(answers) == 40
    assert len(held_at(first)[1]) == 3, "the job's batches were not all made at its model's first deployment"
    assert held_at(base)[1] == set() and held_at(second)[1] == set()


def test_files_and_batches_of_an_azure_deployment_are_the_resources(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Azure deployment's files and batches are its resource's (``/openai/files``,
    ``/openai/batches``, with its ``api-version`` and ``api-key``), not under the
    deployment's path: a batch job on it runs there from upload to collection."""
    monkeypatch.setenv("FG_HOLDERS_AZURE_KEY", "azure-key-2468")
    region_config = FakeConfig(batch=QUICK, api_key="azure-key-2468", azure=AzureShape(deployments={"mini-se": MODEL}))
    with FakeOpenAI(FakeConfig(batch=QUICK)) as base, FakeOpenAI(region_config) as region:
        gate = fg.Gateway(base_url=base.base_url, batch={"poll_min_seconds": 0.02, "poll_max_seconds": 0.2},
                          deployments={MODEL: [fg.ModelDeployment(
                              name="sweden", base_url=region.azure_endpoint, api_key_env="FG_HOLDERS_AZURE_KEY",
                              azure_deployment="mini-se", api_version="2024-10-21")]})
        client = gate.openai(api_key="sk-caller", max_retries=0)
        file_id, where = upload(client, batch_input(2), **FOR_MODEL)
        batch = client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h")
        until(lambda: client.batches.retrieve(batch.id).status == "completed")
        output = client.batches.retrieve(batch.id).output_file_id
        assert output is not None
        lines = client.files.content(output).text.splitlines()
        gate.close()
    assert where == "sweden" and len(lines) == 2
    assert held_at(base) == (set(), set()) and held_at(region)[1] == {batch.id}

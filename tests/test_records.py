"""One structured record per request, and no prompt, answer, API key or user in any log
line, metric or exception message on any path: success, upstream error, upstream 429s
retried, gateway refusal, cache (exact and semantic), stream, structured output, a file
run and a Batch API job."""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path

import openai
import pytest
from pydantic import BaseModel

import fleetgate as fg
from fleetgate.records import template_hash
from fleetgate.run import run_file
from fleetgate.cache import LocalEmbedder
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, ModelLimits

MODEL = "gpt-4.1-mini"
SECRET_PROMPT = f"MARKERPROMPT{uuid.uuid4().hex}"
SECRET_SYSTEM = f"MARKERSYSTEM{uuid.uuid4().hex}"
SECRET_KEY = f"sk-MARKERKEY{uuid.uuid4().hex}"
SECRET_USER = f"MARKERUSER{uuid.uuid4().hex}"
MARKERS = (SECRET_PROMPT, SECRET_SYSTEM, SECRET_KEY, SECRET_KEY.removeprefix("sk-"), SECRET_USER)


class Shape(BaseModel):
    missing: int


def messages(extra: str = "") -> list[dict[str, str]]:
    return [{"role": "system", "content": f"You help. {SECRET_SYSTEM}"},
            {"role": "user", "content": f"Where is my parcel? {SECRET_PROMPT} {extra}"}]


@pytest.mark.fake_openai(config=FakeConfig(faults=[Fault(kind="error", model="gpt-4.1", status=503),
                                           Fault(kind="wrong_schema")],
                                           models={"gpt-4.1-nano": ModelLimits(requests_per_minute=60)}))
def test_no_prompt_answer_or_key_in_logs_or_errors(fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fleetgate")
    gate = fg.Gateway(base_url=fake_openai.base_url, embedder=LocalEmbedder(), breakers={"enabled": False},
                      cache={"enabled": True, "semantic": {"enabled": True}},
                      budgets={"limits": [{"name": "capped", "scope": "feature", "dollars": 1e-9,
                                           "period": "day"}]})
    client = gate.openai(api_key=SECRET_KEY, max_retries=0)
    answers, errors = [], []
    with gate.scope(user=SECRET_USER):
        first = client.chat.completions.create(model=MODEL, temperature=0, messages=messages())
        answers.append(first.choices[0].message.content or "")
        assert gate.cache.semantic is not None
        gate.cache.semantic.flush()
        client.chat.completions.create(model=MODEL, temperature=0, messages=messages())  # exact hit
        client.chat.completions.create(model=MODEL, temperature=0, messages=messages("please"))  # semantic
        stream = client.chat.completions.create(model=MODEL, messages=messages("stream"), stream=True)
        answers.append("".join(c.delta.content or "" for chunk in stream for c in chunk.choices))
        for attempt in (
            lambda: client.chat.completions.create(model="gpt-4.1", messages=messages("upstream error")),
            lambda: gate.complete(messages("schema"), Shape, model=MODEL, client=client, retries=1),
        ):
            with pytest.raises((openai.APIStatusError, fg.FleetgateError)) as raised:
                attempt()
            errors.append(raised.value)
    with gate.scope(user=SECRET_USER, deadline=time.monotonic() + 10):  # upstream 429s, retried by the gateway
        for i in range(3):
            client.chat.completions.create(model="gpt-4.1-nano", messages=messages(f"retry {i}"))
        assert gate.stats["upstream_retries"] >= 1
    with gate.scope(user=SECRET_USER, feature="capped"):
        with pytest.raises(fg.BudgetExceeded) as refused:
            client.chat.completions.create(model=MODEL, messages=messages("budget"))
        errors.append(refused.value)
    gate.close()
    metrics = b"".join(gate.metrics_app()({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
                                          lambda status, headers: None)).decode()
    assert "fleetgate_requests_total" in metrics

    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "fleetgate.requests"]
    assert len(records) == 11, [r["status"] for r in records]  # 4 + 1 error + 2 schema tries + 3 retried + 1 refusal
    assert [r["cache"] for r in records[:3]] == [None, "hit", "semantic"]
    assert {r["template"] for r in records} == {records[0]["template"]}, "one template, one hash"
    other = [{"role": "system", "content": "Another template."}, messages()[1]]
    assert template_hash({"model": MODEL, "messages": other}) != records[0]["template"]
    assert records[0]["prompt_tokens"] and records[0]["cost_usd"] and records[0]["user"] != SECRET_USER
    assert records[0]["cached_tokens"] == 0 and records[0]["cache_write_tokens"] == 0
    # A cached answer cost nothing: no tokens or dollars are recorded for it.
    assert records[1]["cost_usd"] is None and records[1]["prompt_tokens"] is None
    assert records[4]["status"] == 503 and records[-1]["refused"] and records[-1]["status"] == 429
    everything = "\n".join([r.getMessage() for r in caplog.records] + [str(e) for e in errors]
                           + [repr(e) for e in errors] + [metrics])
    for marker in MARKERS:
        assert marker not in everything
    for answer in filter(None, answers):
        assert answer not in everything


def test_no_prompt_answer_or_key_in_the_logs_of_a_file_run(fake_openai: FakeOpenAI, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """`fleetgate run` (requests in the Batch API's line format): the logs, the summary and
    the errors file name lines, never their content."""
    caplog.set_level(logging.DEBUG, logger="fleetgate")
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": MODEL, "messages": messages(str(i))}}) for i in range(5)]
    lines += [f'{{"custom_id": "bad", "body": "{SECRET_PROMPT}"',  # not JSON
              json.dumps({"custom_id": "x", "method": "POST", "url": f"/v1/{SECRET_PROMPT}", "body": {}})]
    src.write_text("\n".join(lines) + "\n")
    gate = fg.Gateway(base_url=fake_openai.base_url)
    with gate.scope(user=SECRET_USER):
        summary = run_file(src, out, gateway=gate, progress=False, api_key=SECRET_KEY)
    assert summary.sent == 5 and summary.bad_lines == 2
    answers = [json.loads(x)["response"]["body"]["choices"][0]["message"]["content"]
               for x in out.read_text().splitlines()]
    everything = "\n".join([r.getMessage() for r in caplog.records] + [summary.render(),
                            (tmp_path / "out.errors.jsonl").read_text()])
    assert sum(r.name == "fleetgate.requests" for r in caplog.records) == 5
    for marker in MARKERS:
        assert marker not in everything
    for answer in answers:
        assert answer not in everything


def test_no_prompt_answer_or_key_in_what_a_batch_job_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Batch jobs: the logs, the refusal of a bad file, the rejected-lines report, the job's
    status, the dead letters and the metrics name lines and ids, never their content."""
    from prometheus_client import REGISTRY, generate_latest

    from fleetgate.batch import BatchInputError
    from fleetgate.testing.fake_openai.config import BatchTimings

    caplog.set_level(logging.DEBUG, logger="fleetgate")
    src = tmp_path / "in.jsonl"
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": MODEL, "messages": messages(str(i)), "max_tokens": 16}}) for i in range(60)]
    lines += [f'{{"custom_id": "bad", "body": "{SECRET_PROMPT}"',  # not JSON
              json.dumps({"custom_id": "x", "method": "POST", "url": f"/v1/{SECRET_PROMPT}", "body": {}})]
    src.write_text("\n".join(lines) + "\n")
    timings = BatchTimings(validating_seconds=0.02, finalizing_seconds=0.02, line_failure_rate=0.2,
                           line_rejection_rate=0.1, duplicate_lines=1, unknown_lines=1)
    with FakeOpenAI(FakeConfig(batch=timings)) as fake:
        gate = fg.Gateway(base_url=fake.base_url, batch={"directory": str(tmp_path / "state"), "max_attempts": 2,
                                                         "poll_min_seconds": 0.02, "poll_max_seconds": 0.2},
                          budgets={"record_spend": True})
        jobs = gate.batches(api_key=SECRET_KEY)
        with pytest.raises(BatchInputError) as refused:
            jobs.submit(src, name="private", user=SECRET_USER)
        report = jobs.submit(src, name="private", user=SECRET_USER, skip_bad_lines=True)
        summary = jobs.collect("private", tmp_path / "out.jsonl")
    assert report.done and summary.dead > 0 and summary.answered > 0
    spenders = gate.costs(by="user")
    assert [user for user, _ in spenders] == [gate.privacy.label("user", SECRET_USER)]  # its pseudonym
    answers = [json.loads(x)["response"]["body"]["choices"][0]["message"]["content"]
               for x in summary.output.read_text().splitlines()]
    everything = "\n".join([r.getMessage() for r in caplog.records] + [
        str(refused.value), repr(refused.value), report.render(), summary.dead_letters.read_text(),
        (tmp_path / "state" / "private" / "rejected.jsonl").read_text(), generate_latest(REGISTRY).decode(),
        json.dumps(spenders)])
    assert "unknown ids" in everything and "line 62" in everything  # it did report, by id and number
    for marker in MARKERS:
        assert marker not in everything
    for answer in answers:
        assert answer not in everything

"""The fake Batch API, through the openai SDK: round trips, expiry, cancellation,
per-line failures, validation and the enqueued-token limit."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from fleetgate.testing.fake_openai import BatchTimings, FakeConfig, FakeOpenAI, ModelLimits

FINAL = {"completed", "failed", "expired", "cancelled"}


def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", max_retries=0)


def line(i: int | str, model: str = "gpt-4.1-mini", **overrides: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 20}
    return {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body, **overrides}


def submit(c: openai.OpenAI, lines: list[dict[str, Any]], endpoint: str = "/v1/chat/completions") -> Any:
    data = "\n".join(json.dumps(entry) for entry in lines).encode()
    uploaded = c.files.create(file=("batch.jsonl", data), purpose="batch")
    return c.batches.create(input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h",  # type: ignore[arg-type]
                            metadata={"job": "test"})


def wait(c: openai.OpenAI, batch_id: str, seen: list[str] | None = None) -> Any:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        batch = c.batches.retrieve(batch_id)
        if seen is not None and (not seen or seen[-1] != batch.status):
            seen.append(batch.status)
        if batch.status in FINAL:
            return batch
        time.sleep(0.02)
    raise AssertionError(f"batch {batch_id} did not finish")


def jsonl(c: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in c.files.content(file_id).text.splitlines()]


def test_a_full_round_trip(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    batch = submit(c, [line(i) for i in range(200)])
    assert batch.status == "validating" and batch.metadata == {"job": "test"}
    seen: list[str] = []
    done = wait(c, batch.id, seen)
    assert seen[-1] == "completed" and "in_progress" in seen
    assert done.request_counts.total == 200 and done.request_counts.completed == 200
    assert done.error_file_id is None and done.usage is not None
    output = jsonl(c, done.output_file_id)
    ids = [o["custom_id"] for o in output]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(200))
    assert ids != [f"req-{i}" for i in range(200)], "output order is not input order"
    first = output[0]["response"]
    assert first["status_code"] == 200 and first["body"]["object"] == "chat.completion"
    assert first["request_id"].startswith("req_")


@pytest.mark.fake_openai(config=FakeConfig(batch=BatchTimings(line_failure_rate=0.2)))
def test_per_line_failures_go_to_the_error_file(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    bad = line("bad")
    bad["body"]["messages"] = []  # a 400 for this line alone
    done = wait(c, submit(c, [line(i) for i in range(100)] + [bad]).id)
    assert done.status == "completed"
    counts = done.request_counts
    assert counts.total == 101 and counts.failed > 1 and counts.completed + counts.failed == 101
    errors = jsonl(c, done.error_file_id)
    assert len(errors) == counts.failed and len(jsonl(c, done.output_file_id)) == counts.completed
    statuses = {e["custom_id"]: e["response"]["status_code"] for e in errors}
    assert statuses.pop("req-bad") == 400 and set(statuses.values()) == {500}


# No validation pause, and a window of a second for 2.5 seconds of work: some lines finish
# and some expire even on a loaded machine (0.5 s including validation once let none finish).
@pytest.mark.fake_openai(config=FakeConfig(batch=BatchTimings(validating_seconds=0, requests_per_second=200,
                                                              completion_window_seconds=1.0)))
def test_expiry_keeps_partial_results(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    done = wait(c, submit(c, [line(i) for i in range(500)]).id)
    assert done.status == "expired" and done.expired_at is not None
    completed = jsonl(c, done.output_file_id)
    expired = jsonl(c, done.error_file_id)
    assert 0 < len(completed) < 500 and len(completed) + len(expired) == 500
    assert {e["error"]["code"] for e in expired} == {"batch_expired"}
    assert {e["custom_id"] for e in completed}.isdisjoint(e["custom_id"] for e in expired)


@pytest.mark.fake_openai(config=FakeConfig(batch=BatchTimings(requests_per_second=100, cancelling_seconds=0.3)))
def test_cancellation(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    batch = submit(c, [line(i) for i in range(1000)])
    while c.batches.retrieve(batch.id).status == "validating":
        time.sleep(0.02)
    cancelling = c.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = wait(c, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts.completed < 1000
    with pytest.raises(openai.APIStatusError, match="Cannot cancel"):
        c.batches.cancel(batch.id)


@pytest.mark.fake_openai(config=FakeConfig(models={"gpt-4.1": ModelLimits(batch_enqueued_tokens=2_000)},
                                           batch=BatchTimings(requests_per_second=20)))
def test_the_enqueued_token_limit(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    first = submit(c, [line(i, model="gpt-4.1") for i in range(50)])  # about 1,350 tokens
    assert wait_status(c, first.id, "in_progress")
    second = wait(c, submit(c, [line(i, model="gpt-4.1") for i in range(50)]).id)
    assert second.status == "failed"
    assert second.errors.data[0].code == "token_limit_exceeded"
    assert "Enqueued token limit reached for gpt-4.1" in second.errors.data[0].message
    c.batches.cancel(first.id)


def wait_status(c: openai.OpenAI, batch_id: str, status: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if c.batches.retrieve(batch_id).status == status:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ([line(1), line(1)], "duplicate_custom_id"),
        ([line(1), line(2, model="gpt-4.1")], "mismatched_model"),
        ([line(1, url="/v1/responses")], "invalid_url"),
        ([{**line(1), "body": {**line(1)["body"], "stream": True}}], "invalid_value"),
        ([line(1, method="GET")], "invalid_method"),
    ],
)
def test_validation_fails_the_batch_with_the_line(fake_openai: FakeOpenAI, lines: list[dict[str, Any]], code: str) -> None:
    c = client(fake_openai)
    done = wait(c, submit(c, lines).id)
    assert done.status == "failed" and done.failed_at is not None
    error = done.errors.data[0]
    assert error.code == code and error.line == len(lines)


def test_creation_errors(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    uploaded = c.files.create(file=("x.jsonl", b"{}"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="metadata"):
        c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                         metadata={f"k{i}": "v" for i in range(17)})
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        c.batches.create(input_file_id=uploaded.id, endpoint="/v1/nowhere", completion_window="24h")  # type: ignore[arg-type]
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h")


def test_list_pages_with_a_cursor_and_files_can_be_deleted(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    created = [submit(c, [line(i)]).id for i in range(5)]
    page = c.batches.list(limit=2)
    assert [b.id for b in page.data] == created[::-1][:2] and page.has_more
    everything = [b.id for b in c.batches.list(limit=2)]  # the SDK follows the cursor
    assert everything == created[::-1]
    uploaded = c.files.create(file=("y.jsonl", b"{}"), purpose="batch")
    assert c.files.retrieve(uploaded.id).bytes == 2
    assert c.files.delete(uploaded.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(uploaded.id)


def test_embeddings_batches(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    lines = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "text-embedding-3-small", "input": f"text {i}"}} for i in range(10)]
    done = wait(c, submit(c, lines, endpoint="/v1/embeddings").id)
    assert done.status == "completed"
    bodies = [o["response"]["body"] for o in jsonl(c, done.output_file_id)]
    assert all(b["object"] == "list" and len(b["data"][0]["embedding"]) == 256 for b in bodies)


def test_at_most_50000_requests_per_batch(fake_openai: FakeOpenAI) -> None:
    c = client(fake_openai)
    template = json.dumps(line("X"))
    data = "\n".join(template.replace("req-X", f"req-{i}") for i in range(50_001)).encode()
    uploaded = c.files.create(file=("big.jsonl", data), purpose="batch")
    batch = c.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait(c, batch.id)
    assert done.status == "failed"
    assert done.errors.data[0].code == "too_many_requests" and done.errors.data[0].line == 50_001

"""The fake OpenAI server's Usage and Costs APIs, read through the real SDK: what it billed,
in buckets and pages as OpenAI serves them, to an admin key only."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest

from fleetgate.testing.fake_openai import FakeOpenAI
from tests.polling import until

DAY = 86_400
ASK = [{"role": "user", "content": "How do I reset my password?"}]


def midnight(days_ago: int = 0) -> int:
    now = int(time.time())
    return now - now % DAY - days_ago * DAY


def admin(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, admin_api_key="sk-admin-test", max_retries=0)


def spend(fake: FakeOpenAI, project: str, days_ago: int, calls: int = 1) -> None:
    """`calls` chat calls billed to `project`, dated `days_ago` days back (noon, UTC)."""
    fake.set_bill_clock(lambda: midnight(days_ago) + DAY / 2)
    client = openai.OpenAI(base_url=fake.base_url, api_key="sk-fake", project=project, max_retries=0)
    for _ in range(calls):
        client.chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    fake.set_bill_clock(time.time)


def test_costs_add_up_to_the_bill_per_day_and_project_across_pages(fake_openai: FakeOpenAI) -> None:
    spend(fake_openai, "proj_a", 20, calls=2)
    spend(fake_openai, "proj_b", 9)
    spend(fake_openai, "proj_a", 0)
    usage = admin(fake_openai).admin.organization.usage
    buckets, pages, page = [], 0, None
    while True:
        answer = usage.costs(start_time=midnight(29), end_time=midnight(-1), group_by=["project_id", "line_item"],
                             limit=7, **({"page": page} if page else {}))
        pages += 1
        buckets += answer.data
        if not answer.has_more:
            assert answer.next_page is None
            break
        page = answer.next_page
    assert pages == 5 and len(buckets) == 30, "30 daily buckets, 7 a page, empty ones included"
    assert [b.start_time for b in buckets] == [midnight(29 - i) for i in range(30)]
    per_day: dict[tuple[int, str], float] = {}
    for bucket in buckets:
        for result in bucket.results:
            assert result.amount is not None and result.amount.currency == "usd"
            assert result.line_item is not None and result.line_item.startswith("gpt-4.1-mini, ")
            key = (bucket.start_time, result.project_id or "")
            per_day[key] = per_day.get(key, 0.0) + (result.amount.value or 0.0)
    billed: dict[tuple[int, str], float] = {}
    for charge in fake_openai.bill():
        key = (int(charge.at) - int(charge.at) % DAY, charge.project)
        billed[key] = billed.get(key, 0.0) + (charge.dollars or 0.0)
    assert per_day.keys() == billed.keys() == {(midnight(20), "proj_a"), (midnight(9), "proj_b"), (midnight(0), "proj_a")}
    for key, dollars in billed.items():
        assert per_day[key] == pytest.approx(dollars)


def test_usage_counts_requests_and_tokens_per_model_and_endpoint(fake_openai: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake", max_retries=0)
    chat = client.chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    answer = client.responses.create(model="gpt-4.1", input="Summarise the refund policy.")
    client.embeddings.create(model="text-embedding-3-small", input="refund policy")
    usage = admin(fake_openai).admin.organization.usage
    completions = usage.completions(start_time=midnight(), group_by=["model", "project_id"], bucket_width="1h",
                                    limit=24)
    results = {r.model: r for b in completions.data for r in b.results}
    assert set(results) == {"gpt-4.1", "gpt-4.1-mini"}
    assert chat.usage is not None and answer.usage is not None
    assert (results["gpt-4.1-mini"].num_model_requests, results["gpt-4.1-mini"].input_tokens,
            results["gpt-4.1-mini"].output_tokens) == (1, chat.usage.prompt_tokens, chat.usage.completion_tokens)
    assert results["gpt-4.1"].output_tokens == answer.usage.output_tokens
    assert {r.project_id for r in results.values()} == {"proj_default"}
    embeddings = usage.embeddings(start_time=midnight(), group_by=["model"])
    assert [(r.model, r.num_model_requests) for b in embeddings.data for r in b.results] == [
        ("text-embedding-3-small", 1)]
    filtered = usage.completions(start_time=midnight(), models=["gpt-4.1"])
    assert [r.num_model_requests for b in filtered.data for r in b.results] == [1]


def test_only_an_admin_key_reads_usage_and_bad_queries_say_what_is_wrong(fake_openai: FakeOpenAI) -> None:
    project_key = openai.OpenAI(base_url=fake_openai.base_url, admin_api_key="sk-proj-abc", max_retries=0)
    with pytest.raises(openai.PermissionDeniedError, match="admin API key"):
        project_key.admin.organization.usage.costs(start_time=midnight())
    usage = admin(fake_openai).admin.organization.usage
    with pytest.raises(openai.BadRequestError, match="between 1 and 31"):
        usage.completions(start_time=midnight(), limit=32)
    with pytest.raises(openai.BadRequestError, match="supports only '1d'"):
        usage.costs(start_time=midnight(), bucket_width="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="not a cursor of this query"):
        usage.costs(start_time=midnight(), page="page_bm9wZQ==")


def test_batch_lines_are_reported_as_batch_at_the_batch_price(fake_openai: FakeOpenAI, tmp_path: Any) -> None:
    client = openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-fake", max_retries=0)
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": "gpt-4.1-mini", "messages": ASK}}) for i in range(3)]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    uploaded = client.files.create(file=(tmp_path / "in.jsonl").open("rb"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    until(lambda: client.batches.retrieve(batch.id).status == "completed")
    client.chat.completions.create(model="gpt-4.1-mini", messages=ASK)
    usage = admin(fake_openai).admin.organization.usage

    split = usage.completions(start_time=midnight(), group_by=["batch", "service_tier"])
    counts = {(r.batch, r.service_tier): r.num_model_requests for b in split.data for r in b.results}
    assert counts == {(True, "batch"): 3, (False, "default"): 1}
    only_batch = usage.completions(start_time=midnight(), batch=True)
    assert [r.num_model_requests for b in only_batch.data for r in b.results] == [3]

    costs = usage.costs(start_time=midnight(), group_by=["line_item"])
    items = {r.line_item: r.amount.value for b in costs.data for r in b.results if r.amount is not None}
    assert set(items) == {"gpt-4.1-mini, input_tokens", "gpt-4.1-mini, output_tokens",
                          "gpt-4.1-mini, input_tokens (batch)", "gpt-4.1-mini, output_tokens (batch)"}
    bill = fake_openai.bill()
    assert sum(items.values()) == pytest.approx(sum(c.dollars or 0.0 for c in bill))
    assert sum(v or 0.0 for k, v in items.items() if "(batch)" in (k or "")) == pytest.approx(
        sum(c.dollars or 0.0 for c in bill if c.tier == "batch"))

"""Every endpoint the Batch API accepts, through batch jobs and ``fleetgate run``, against
the fake OpenAI and the real SDK: bodies checked for their endpoint, jobs split, sent,
collected and billed once per line at the batch price; one endpoint per file; embeddings
within 50,000 inputs per batch; /v1/videos refused."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate.batch import BatchInputError, BatchJobs, split_file
from fleetgate.cli import main
from fleetgate.run import run_file
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI
from fleetgate.testing.fake_openai.config import BatchTimings

QUICK = BatchTimings(validating_seconds=0.02, finalizing_seconds=0.02, cancelling_seconds=0.05)
#: Prices of the models below (the shipped table lists none of them).
PRICES = {"models": {"gpt-3.5-turbo-instruct": {"input": 1.5, "output": 2.0},
                     "gpt-image-1.5": {"input": 5.0, "output": 40.0}}}


def body_for(url: str, i: int) -> dict[str, Any]:
    """A valid body of request `i` for `url`."""
    return {
        "/v1/completions": {"model": "gpt-3.5-turbo-instruct", "prompt": f"Say {i} in words", "max_tokens": 12},
        "/v1/moderations": {"model": "omni-moderation-latest",
                            "input": f"message {i}" if i % 3 else [f"I will attack {i}", "hello"]},
        "/v1/images/generations": {"model": "gpt-image-1.5", "prompt": f"a cat number {i}", "quality": "low",
                                   "size": "1024x1024", "n": 1 + i % 2},
        "/v1/images/edits": {"model": "gpt-image-1.5", "prompt": f"give cat {i} a hat", "quality": "low", "n": 1 + i % 2,
                             "images": [{"image_url": f"https://example.com/cat{i}.png"}, {"file_id": "file-abc"}]},
        "/v1/embeddings": {"model": "text-embedding-3-small", "input": [f"text {i}", f"more {i}"], "dimensions": 4},
        "/v1/chat/completions": {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": f"q {i}"}],
                                 "max_tokens": 8},
    }[url]


def line(url: str, i: int, body: dict[str, Any] | None = None) -> str:
    return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": url, "body": body or body_for(url, i)})


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def jobs_for(fake: FakeOpenAI, tmp_path: Path, **batch: Any) -> BatchJobs:
    settings = {"directory": str(tmp_path / "state"), "poll_min_seconds": 0.02, "poll_max_seconds": 0.2,
                "lease_seconds": 5.0, **batch}
    return fg.Gateway(base_url=fake.base_url, prices=PRICES, batch=settings).batches(api_key="sk-fake")


NEW_ENDPOINTS = ["/v1/completions", "/v1/moderations", "/v1/images/generations", "/v1/images/edits"]


@pytest.mark.parametrize("url", NEW_ENDPOINTS)
def test_a_job_of_each_endpoint_is_split_sent_collected_and_billed_once_per_line(tmp_path: Path, url: str) -> None:
    src = write(tmp_path / "in.jsonl", [line(url, i) for i in range(25)])
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        jobs = jobs_for(fake, tmp_path, max_lines=10)
        report = jobs.submit(src, name="job")
        assert report.done and report.succeeded == 25 and report.dead == 0
        batches = fake.batches()
        assert sorted(b["request_counts"]["total"] for b in batches) == [5, 10, 10]
        assert {b["endpoint"] for b in batches} == {url}
        summary = jobs.collect("job", tmp_path / "out.jsonl")
        answers = {a["custom_id"]: a for a in map(json.loads, summary.output.read_text().splitlines())}
        assert set(answers) == {f"r{i}" for i in range(25)} and summary.dead == 0
        bill = fake.bill()
        if url == "/v1/moderations":  # free: nothing billed, nothing spent
            results = answers["r0"]["response"]["body"]["results"]
            assert [r["flagged"] for r in results] == [True, False]
            assert bill == [] and report.cost == 0
            return
        # Every line billed once, at the batch tier; the job's cost is the bill's usage at the batch price.
        assert len(bill) == 25 and {c.tier for c in bill} == {"batch"}
        gate_prices = jobs.gateway.prices
        assert report.cost == pytest.approx(sum(gate_prices.cost(c.model, c.usage, tier="batch") or 0 for c in bill))
        assert report.cost > 0
        if url.startswith("/v1/images/"):
            body = answers["r1"]["response"]["body"]
            assert len(body["data"]) == 2 and body["usage"]["output_tokens"] == 2 * 272


def test_image_chunks_hold_their_worst_case_on_the_budget_and_settle_to_the_bill(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [line("/v1/images/generations", i) for i in range(6)])
    budgets = {"limits": [{"scope": "feature", "name": "art", "dollars": 10.0, "period": "day"}]}
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        gate = fg.Gateway(base_url=fake.base_url, prices=PRICES, budgets=budgets,
                          batch={"directory": str(tmp_path / "state"), "poll_min_seconds": 0.02})
        split = split_file(src, None, max_lines=50_000, max_bytes=1 << 30, max_tokens=1 << 40, default_max_output=64)
        # Sized as the most the images may produce: n images of 272 tokens each (low quality, 1024x1024).
        assert split.chunks[0].output_tokens == sum(272 * (1 + i % 2) for i in range(6))
        report = gate.batches(api_key="sk-fake").submit(src, name="art", feature="art")
        assert report.succeeded == 6
        billed = sum(c.usage["output_tokens"] * 40.0 + c.usage["input_tokens"] * 5.0 for c in fake.bill()) / 1e6 / 2
        assert gate.costs(by="feature") == [("art", pytest.approx(billed))]


def test_an_unpriced_model_under_a_budget_follows_the_unpriced_policy(tmp_path: Path) -> None:
    unpriced = "acme-image-1"  # a model the shipped table does not list
    src = write(tmp_path / "in.jsonl", [line("/v1/images/generations", i, {**body_for("/v1/images/generations", i),
                                                                           "model": unpriced}) for i in range(3)])
    limits = [{"scope": "feature", "name": "art", "dollars": 10.0, "period": "day"}]
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        settings = {"directory": str(tmp_path / "state"), "poll_min_seconds": 0.02}
        refusing = fg.Gateway(base_url=fake.base_url, budgets={"limits": limits}, batch=settings)
        with pytest.raises(fg.ConfigError, match=r"model 'acme-image-1' has no price.*the job was not submitted"):
            refusing.batches(api_key="sk-fake").submit(src, name="unpriced", feature="art")
        assert fake.files() == []
        allowing = fg.Gateway(base_url=fake.base_url, budgets={"limits": limits, "unpriced": "allow"}, batch=settings)
        report = allowing.batches(api_key="sk-fake").submit(src, name="unpriced", feature="art")
        assert report.succeeded == 3 and report.cost == 0


def test_embeddings_batches_hold_at_most_50000_inputs(tmp_path: Path) -> None:
    # 30 requests of 2,048 inputs: 61,440 inputs, too many for one batch whatever its lines.
    big = {"model": "text-embedding-3-small", "input": ["x"] * 2048, "dimensions": 2}
    src = write(tmp_path / "in.jsonl", [line("/v1/embeddings", i, big) for i in range(30)])
    with FakeOpenAI(FakeConfig(batch=QUICK.model_copy(update={"requests_per_second": 5_000}))) as fake:
        report = jobs_for(fake, tmp_path).submit(src, name="emb")
        assert report.succeeded == 30
        batches = fake.batches()
        assert all(b["status"] == "completed" for b in batches), "the fake refuses a batch of more than 50,000 inputs"
        assert sorted(b["request_counts"]["total"] for b in batches) == [6, 24]  # 24 * 2,048 = 49,152
    # The limit is a parameter of the split, and one line too big for it is reported.
    small = split_file(src, None, max_lines=50_000, max_bytes=1 << 30, max_tokens=1 << 40, default_max_output=64,
                       max_inputs=5_000)
    assert [c.lines for c in small.chunks] == [2] * 15
    too_big = split_file(src, None, max_lines=50_000, max_bytes=1 << 30, max_tokens=1 << 40, default_max_output=64,
                         max_inputs=1_000)
    assert not too_big.chunks and "2048 embedding inputs, more than a batch may hold (1000)" in too_big.problems[0].reason


@pytest.mark.parametrize("first,other", [("/v1/chat/completions", "/v1/completions"),
                                         ("/v1/images/edits", "/v1/images/generations"),
                                         ("/v1/moderations", "/v1/embeddings")])
def test_a_file_mixing_endpoints_is_refused_with_the_lines_at_fault(tmp_path: Path, first: str, other: str) -> None:
    src = write(tmp_path / "in.jsonl", [line(first, i) for i in range(4)] + [line(other, 4), line(first, 5)])
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        jobs = jobs_for(fake, tmp_path)
        with pytest.raises(BatchInputError) as e:
            jobs.submit(src, name="mixed")
        assert [p.line for p in e.value.problems] == [5]
        assert f"line 5: url must be {first}, the file's endpoint (one endpoint per batch)" in str(e.value)
        assert "skip_bad_lines=True" in str(e.value)
        assert fake.files() == [] and fake.batches() == []


def test_bodies_are_checked_for_their_endpoint_and_videos_are_refused(tmp_path: Path) -> None:
    bad = [
        line("/v1/completions", 1, {"model": "gpt-3.5-turbo-instruct", "max_tokens": 5}),
        line("/v1/completions", 2, {"model": "gpt-3.5-turbo-instruct", "prompt": []}),
        line("/v1/completions", 3, {"prompt": "no model"}),
        json.dumps({"custom_id": "v", "method": "POST", "url": "/v1/videos", "body": {"model": "sora-2", "prompt": "x"}}),
    ]
    src = write(tmp_path / "in.jsonl", [line("/v1/completions", 0), *bad, line("/v1/completions", 9)])
    result = split_file(src, None, max_lines=50_000, max_bytes=1 << 30, max_tokens=1 << 40, default_max_output=64)
    assert result.lines == 2 and result.chunks[0].lines == 2
    reasons = {p.line: p.reason for p in result.problems}
    assert reasons[2].startswith("body.prompt is missing: a completion needs a prompt")
    assert reasons[3].startswith("body.prompt must be a non-empty string")
    assert reasons[4] == "body has no model"
    assert "the Videos API shut down on 2026-09-24" in reasons[5]
    # A checked-out line stays out of the chunk file, which holds the good lines whole.
    with_files = split_file(src, tmp_path / "chunks", max_lines=50_000, max_bytes=1 << 30, max_tokens=1 << 40,
                            default_max_output=64)
    written = with_files.chunks[0].path.read_bytes()
    assert written.decode().splitlines() == [line("/v1/completions", 0), line("/v1/completions", 9)]
    assert with_files.chunks[0].bytes == len(written)
    images = write(tmp_path / "img.jsonl", [
        line("/v1/images/edits", 0),
        line("/v1/images/edits", 1, {"model": "gpt-image-1.5", "prompt": "hat", "image": "cat.png"}),
        line("/v1/images/edits", 2, {"model": "gpt-image-1.5", "prompt": "hat", "images": [{}]}),
        line("/v1/images/generations", 3, {"model": "gpt-image-1.5", "prompt": "cat", "n": 11}),
    ])
    reasons = {p.line: p.reason for p in split_file(images, None, max_lines=50_000, max_bytes=1 << 30,
                                                     max_tokens=1 << 40, default_max_output=64).problems}
    assert "a JSON line cannot carry" in reasons[2] and "body.images must list 1 to 16 images" in reasons[3]
    assert reasons[4] == "url must be /v1/images/edits, the file's endpoint (one endpoint per batch)"
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:  # and OpenAI refuses a /v1/videos batch outright
        client = openai.OpenAI(base_url=fake.base_url, api_key="sk-fake")
        uploaded = client.files.create(file=("v.jsonl", bad[3].encode()), purpose="batch")
        with pytest.raises(openai.BadRequestError, match="endpoint"):
            client.batches.create(input_file_id=uploaded.id, endpoint="/v1/videos", completion_window="24h")


def test_submit_async_runs_a_moderations_job(tmp_path: Path) -> None:
    src = write(tmp_path / "in.jsonl", [line("/v1/moderations", i) for i in range(12)])
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        jobs = jobs_for(fake, tmp_path, max_lines=5)
        report = asyncio.run(jobs.submit_async(src, "mods"))
        assert report.succeeded == 12 and len(fake.batches()) == 3
        summary = asyncio.run(jobs.collect_async("mods", tmp_path / "out.jsonl"))
        assert summary.answered == 12


@pytest.mark.parametrize("url", [*NEW_ENDPOINTS, "/v1/embeddings"])
def test_fleetgate_run_sends_each_endpoint_and_passes_ungated_ones_through(fake_openai: FakeOpenAI, tmp_path: Path,
                                                                          url: str) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [line(url, i) for i in range(8)] + [line("/v1/videos", 8, {"model": "sora-2", "prompt": "x"})])
    gate = fg.Gateway(base_url=fake_openai.base_url, prices=PRICES)
    summary = run_file(src, out, gateway=gate, progress=False, api_key="sk-fake")
    answered = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(a["custom_id"] for a in answered) == [f"r{i}" for i in range(8)]
    assert all(a["response"]["status_code"] == 200 for a in answered)
    assert summary.succeeded == 8 and summary.bad_lines == 1
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert errors[0]["line"] == 9 and "Videos API shut down" in errors[0]["error"]
    bill = fake_openai.bill()
    assert {c.tier for c in bill} <= {"default"} and len(bill) == (0 if url == "/v1/moderations" else 8)
    assert summary.cost == pytest.approx(sum(gate.prices.cost(c.model, c.usage) or 0 for c in bill))
    if url == "/v1/embeddings":  # gated: through the quotas, never "passed through"
        assert not summary.passed_through and gate.stats["requests"] == 8
    else:
        assert summary.passed_through == Counter({url: 8}) and gate.stats["requests"] == 0
        assert f"passed through ungated (no quota or budget): {url} 8" in summary.render()


def test_fleetgate_run_refuses_a_body_its_endpoint_cannot_take(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write(src, [line("/v1/moderations", 0), line("/v1/moderations", 1, {"model": "omni-moderation-latest"})])
    result = CliRunner().invoke(main, ["run", str(src), "--out", str(out), "--base-url", fake_openai.base_url,
                                       "--api-key", "sk-fake"])
    assert result.exit_code == 0, result.output
    assert "1 bad input lines were skipped" in result.output
    assert "passed through ungated (no quota or budget): /v1/moderations 1" in result.output
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert errors == [{"line": 2, "error": "body.input must be a non-empty string, a list of them, or a list of "
                                           "text and image_url parts"}]


def test_the_commands_say_which_endpoints_they_take() -> None:
    runner = CliRunner()
    run_help = runner.invoke(main, ["run", "--help"]).output
    assert "completions, moderations and images pass through the gateway untouched" in run_help
    submit_help = runner.invoke(main, ["batch", "submit", "--help"]).output
    for url in ("/v1/completions", "/v1/moderations", "/v1/images/generations", "/v1/images/edits"):
        assert url in submit_help
    assert "Videos API shut down" in submit_help and "50,000 inputs" in submit_help


def test_the_python_splitter_sizes_and_refuses_embeddings_lines_as_the_core_does() -> None:
    from fleetgate._core import Splitter
    from fleetgate.batch.lines import LineSplitter

    def emb(custom_id: str, value: Any, **extra: Any) -> str:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings",
                           "body": {"model": "text-embedding-3-small", "input": value}, **extra})

    lines = [
        emb("a", "hello world"), emb("b", ["naïve café", "日本語のテキストです", "x" * 90]), emb("c", [1, 2, 3, 4]),
        emb("d", [[5, 6], [7]]), emb("a", "again"), emb("e" * 65, "long id"), emb("f", "get", method="GET"),
        json.dumps({"custom_id": "g", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-large", "input": "other model"}}),
        json.dumps({"custom_id": "h", "method": "POST", "url": "/v1/embeddings",
                    "body": {"model": "text-embedding-3-small", "input": "s", "stream": True}}),
        "not json", "[1]", emb("i", "Ünïcödé " * 40),
    ]
    text = "\n".join(lines) + "\n"
    half = len("\n".join(lines[:6])) + 1
    blocks = [text[:half].encode(), text[half:].encode()]  # what a file carries over from block to block too

    def by_chunk(runs: list[tuple[int, int, int, int, int, int]]) -> dict[int, list[int]]:
        """Each chunk's bytes, lines, tokens and output tokens (the core joins a chunk's
        consecutive lines into one run, the Python splitter gives a run per line)."""
        chunks: dict[int, list[int]] = {}
        for chunk, start, end, count, tokens, output in runs:
            totals = chunks.setdefault(chunk, [0, 0, 0, 0])
            for k, value in enumerate((end - start + 1, count, tokens, output)):
                totals[k] += value
        return chunks

    cuts = [{"max_lines": 3, "max_bytes": 1 << 30, "max_tokens": 1 << 40},  # by lines
            {"max_lines": 50, "max_bytes": 180, "max_tokens": 1 << 40},  # by bytes; two lines too long
            {"max_lines": 50, "max_bytes": 1 << 30, "max_tokens": 40},  # by tokens; one request too big
            {"max_lines": 50, "max_bytes": 1 << 30, "max_tokens": 1 << 40,
             "model_tokens": {"text-embedding-3-small": 40}}]  # by the file's model's tokens
    for limits in cuts:
        core = Splitter(endpoint="/v1/embeddings", default_max_output=16, **limits)
        ours = LineSplitter(endpoint="/v1/embeddings", **limits)
        core_runs: list[tuple[int, int, int, int, int, int]] = []
        ours_runs: list[tuple[int, int, int, int, int, int]] = []
        core_problems: list[tuple[int, str]] = []
        ours_problems: list[tuple[int, str]] = []
        for block in blocks:
            runs, problems = core.split(block)
            core_runs += runs
            core_problems += problems
            runs, problems = ours.split(block)
            ours_runs += runs
            ours_problems += problems
        assert by_chunk(ours_runs) == by_chunk(core_runs) and len(by_chunk(core_runs)) > 1, limits
        assert [p[0] for p in ours_problems] == [p[0] for p in core_problems], limits
        for (number, reason), (_, core_reason) in zip(ours_problems, core_problems):
            if number == 10:  # the same words, but for the JSON parser's own account of a line that is not JSON
                assert reason.startswith("not valid JSON (") and core_reason.startswith("not valid JSON ("), limits
            else:
                assert reason == core_reason, limits
        assert (ours.endpoint, ours.model, ours.lines_read) == (core.endpoint, core.model, core.lines_read) == (
            "/v1/embeddings", "text-embedding-3-small", len(lines))
    assert [p[0] for p in core_problems] == [5, 6, 7, 8, 9, 10, 11, 12]  # the model's 40 tokens refuse line 12


@pytest.mark.parametrize("tier", ["flex", "priority"])
def test_fleetgate_run_costs_each_answer_at_the_tier_that_served_it(fake_openai: FakeOpenAI, tmp_path: Path,
                                                                    tier: str) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    url = "/v1/chat/completions"
    write(src, [line(url, i, {**body_for(url, i), "model": "gpt-5.5", "service_tier": tier}) for i in range(4)])
    summary = run_file(src, out, gateway=fg.Gateway(base_url=fake_openai.base_url), progress=False, api_key="sk-fake")
    bill = fake_openai.bill()
    assert summary.succeeded == 4 and len(bill) == 4 and {c.tier for c in bill} == {tier}
    assert summary.cost > 0 and summary.cost == pytest.approx(sum(c.dollars or 0 for c in bill))

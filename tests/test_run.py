"""fleetgate run: results per custom_id, bad lines reported, and resume after a stop."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fleetgate as fg
from fleetgate.run import run_file
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, Fault, Latency, ModelLimits

MODEL = "gpt-4.1-mini"


def write_input(path: Path, n: int, extra: list[str] | None = None) -> None:
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                         "body": {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}],
                                  "max_tokens": 16}}) for i in range(n)]
    path.write_text("\n".join(lines + (extra or [])) + "\n")


def results(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_line_answered_once_and_bad_lines_reported(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(src, 40, extra=["{broken", json.dumps({"custom_id": "x", "url": "/v1/nowhere", "body": {}})])
    gate = fg.Gateway(base_url=fake_openai.base_url, models={MODEL: fg.QuotaLimits(requests_per_minute=6_000)})
    summary = run_file(src, out, gateway=gate, progress=False, api_key="sk-fake")
    answered = results(out)
    assert sorted(r["custom_id"] for r in answered) == sorted(f"r{i}" for i in range(40))
    assert all(r["response"]["status_code"] == 200 for r in answered)
    assert summary.sent == 40 and summary.bad_lines == 2 and summary.tokens["output"] > 0 and summary.cost > 0
    errors = [json.loads(x) for x in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [41, 42]
    # Run again: nothing left to do.
    again = run_file(src, out, gateway=gate, progress=False, api_key="sk-fake")
    assert again.sent == 0 and again.skipped == 40
    assert fake_openai.counters(MODEL).requests == 40


SLOW = FakeConfig(models={MODEL: ModelLimits(requests_per_minute=6_000)},
                  faults=[Fault(kind="latency", latency=Latency(ms=50))])


def test_a_stopped_run_resumes_without_redoing_finished_lines(tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(src, 60)
    with FakeOpenAI(SLOW) as fake:
        cmd = [sys.executable, "-m", "fleetgate.cli", "run", str(src), "--out", str(out),
               "--base-url", fake.base_url, "--api-key", "sk-fake", "--concurrency", "4"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        first = {r["custom_id"] for r in results(out)}
        assert 10 <= len(first) < 60, "stopped part-way"
        sent_before = fake.counters(MODEL).requests
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert f"{len(first)} already done" in done.stdout
        answered = [r["custom_id"] for r in results(out)]
        assert sorted(answered) == sorted(f"r{i}" for i in range(60)), "each custom_id exactly once"
        # Only the unfinished lines (plus at most the 4 in flight at the stop) were sent again.
        assert fake.counters(MODEL).requests - sent_before == 60 - len(first)
        assert sent_before <= len(first) + 4


def test_the_command_needs_an_api_key(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fleetgate.cli import main

    src = tmp_path / "in.jsonl"
    write_input(src, 1)
    result = CliRunner(env={"OPENAI_API_KEY": ""}).invoke(main, ["run", str(src), "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "API key" in result.output


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(requests_per_minute=600)}))
def test_the_run_is_paced_by_the_quota(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(src, 30)
    gate = fg.Gateway(base_url=fake_openai.base_url, models={MODEL: fg.QuotaLimits(requests_per_minute=570)})
    summary = run_file(src, out, gateway=gate, concurrency=16, progress=False, api_key="sk-fake")
    assert summary.succeeded == 30
    assert fake_openai.counters(MODEL).rate_limited == 0, "paced by the gateway, never refused upstream"


def test_a_run_waits_for_quota_past_the_interactive_deadline(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(src, 6)
    gate = fg.Gateway(base_url=fake_openai.base_url, default_deadline_seconds=0.1,
                      models={MODEL: fg.QuotaLimits(requests_per_minute=240)})  # one every 0.25 s
    summary = run_file(src, out, gateway=gate, concurrency=6, progress=False, api_key="sk-fake")
    assert summary.succeeded == 6 and gate.stats["refused"] == 0


# -- the summary --------------------------------------------------------------------------------


def test_quota_use_counts_the_window_the_run_covered_and_its_burst() -> None:
    from fleetgate.summary import QuotaUse, allowed_in

    bucket = fg.QuotaLimits(requests_per_minute=1_200, tokens_per_minute=200_000)
    # 40 requests in 1 s: a full bucket's 20 (one second's share) and 20 more as it refills.
    # Per minute of the run's second alone that would be 200%.
    assert allowed_in(1_200, 1.0, bucket) == 40
    use = QuotaUse("m", bucket, seconds=1.0, requests=40, tokens=5_000)
    assert use.requests_share == 1.0 and use.tokens_share == 5_000 / (200_000 / 60 * 2)
    assert use.binding == "requests" and use.bound
    longer = fg.QuotaLimits(requests_per_minute=1_200, burst_seconds=5)
    assert allowed_in(1_200, 1.0, longer) == 120
    window = fg.QuotaLimits(requests_per_minute=1_200, algorithm="sliding_window")
    assert allowed_in(1_200, 1.0, window) == 1_200 and allowed_in(1_200, 61.0, window) == 2_400
    idle = QuotaUse("m", bucket, seconds=10.0, requests=20, tokens=100, waiting=0.0)
    assert not idle.bound and "requests the most used, but the quota did not set the pace" in idle.render()


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(requests_per_minute=1_200)}))
def test_the_summary_names_the_binding_limit_and_splits_waiting_from_upstream(fake_openai: FakeOpenAI,
                                                                             tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(src, 40)
    # Ten requests a second, a burst of ten: all 40 asked at once, most wait for quota.
    gate = fg.Gateway(base_url=fake_openai.base_url,
                      models={MODEL: fg.QuotaLimits(requests_per_minute=600, tokens_per_minute=10_000_000)})
    summary = run_file(src, out, gateway=gate, concurrency=40, progress=False, api_key="sk-fake")
    counters = fake_openai.counters(MODEL)
    assert summary.succeeded == 40
    assert summary.quota_requests[MODEL] == counters.requests == 40
    assert summary.quota_tokens[MODEL] == counters.tokens_admitted, "tokens counted as upstream counts them"
    [use] = summary.quota_use()
    assert use.binding == "requests" and use.bound
    assert use.requests_share is not None and use.requests_share <= 1.0, "never more than the limit allows"
    text = summary.render()
    quota_line = next(line for line in text.splitlines() if line.startswith("quota use, "))
    assert quota_line.startswith(f"quota use, {MODEL}: requests bound the pace: requests ")
    assert "of 600/min (40 sent upstream); tokens " in quota_line and "of 10,000,000/min" in quota_line
    assert "its rate for that time plus its 1 s burst" in text
    assert "\n  waiting for request quota: p50 " in text and "\n  upstream: p50 " in text
    p95 = next(line for line in text.splitlines() if line.startswith("  the p95 request: "))
    assert " = waiting for request quota " in p95 and " + upstream " in p95
    assert len(summary.times) == 40
    for t in summary.times:
        assert t.upstream_ms > 0 and "quota" in t.waited_ms
        assert t.total_ms >= t.upstream_ms + sum(t.waited_ms.values())


def test_the_summary_without_limits_says_where_the_time_went(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(src, 5)
    summary = run_file(src, out, gateway=fg.Gateway(base_url=fake_openai.base_url), progress=False, api_key="sk-fake")
    text = summary.render()
    assert "quota use" not in text and "waiting for" not in text, "no quota, no waiting for one"
    assert "\n  upstream: p50 " in text and "\n  the p95 request: " in text


@pytest.mark.fake_openai(config=FakeConfig(models={MODEL: ModelLimits(requests_per_minute=1_200)}))
def test_the_command_reports_the_quota_use_of_the_configured_model(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fleetgate.cli import main

    src, config = tmp_path / "in.jsonl", tmp_path / "fleetgate.toml"
    write_input(src, 12)
    config.write_text(f'[models."{MODEL}"]\nrequests_per_minute = 600\n')
    result = CliRunner().invoke(main, ["run", str(src), "--out", str(tmp_path / "out.jsonl"), "--config", str(config),
                                       "--base-url", fake_openai.base_url, "--api-key", "sk-fake"])
    assert result.exit_code == 0, result.output
    quota = next(line for line in result.output.splitlines() if line.startswith("quota use, "))
    share = re.search(r": requests ([\d.]+)% of 600/min \(12 sent upstream\)$", quota)
    assert share is not None and quota.startswith(f"quota use, {MODEL}: requests "), quota
    assert 0 < float(share.group(1)) <= 100, "a short run never uses more than the limit allows"
    assert "\n  upstream: p50 " in result.output and "\n  the p95 request: " in result.output

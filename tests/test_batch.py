"""Batch jobs against the fake OpenAI: splitting at each limit, enqueued-token waits,
expiry and retries, dead letters, cancellation, anomalies in the output, budgets, the job
record in Redis, and the CLI."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import fleetgate as fg
from fleetgate.batch import BatchInputError, BatchJobs, JobBusy, split_file
from fleetgate.batch.state import RedisJobStore
from fleetgate.cli import main
from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits
from fleetgate.testing.fake_openai.config import BatchTimings

MODEL = "gpt-4.1-mini"
QUICK = BatchTimings(validating_seconds=0.02, finalizing_seconds=0.02, cancelling_seconds=0.05)


def line(i: int, **body: Any) -> str:
    return json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}],
                                "max_tokens": 16, **body}})


def write_input(path: Path, n: int, extra: list[str] | None = None) -> Path:
    path.write_text("\n".join([line(i) for i in range(n)] + (extra or [])) + "\n")
    return path


def jobs_for(fake: FakeOpenAI, tmp_path: Path, **batch: Any) -> BatchJobs:
    settings = {"directory": str(tmp_path / "state"), "poll_min_seconds": 0.02, "poll_max_seconds": 0.2,
                "lease_seconds": 5.0, **batch}
    gate = fg.Gateway(base_url=fake.base_url, batch=settings)
    return gate.batches(api_key="sk-fake")


def collected(jobs: BatchJobs, job: str, tmp_path: Path) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    summary = jobs.collect(job, tmp_path / f"{job}.out.jsonl")
    answers = [json.loads(x) for x in summary.output.read_text().splitlines()]
    dead = [json.loads(x) for x in summary.dead_letters.read_text().splitlines()]
    ids = [a["custom_id"] for a in answers] + [d["custom_id"] for d in dead]
    assert len(ids) == len(set(ids)), "every request has exactly one result"
    return {a["custom_id"]: a for a in answers}, {d["custom_id"]: d for d in dead}


def fake_batches(fake: FakeOpenAI) -> list[dict[str, Any]]:
    return fake.batches()


def test_split_at_each_limit(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 100)
    size = len(line(0)) + 1
    base = {"max_lines": 50_000, "max_bytes": 1 << 30, "max_tokens": 1 << 40, "default_max_output": 64}
    by_lines = split_file(src, tmp_path / "a", **{**base, "max_lines": 30})
    assert [c.lines for c in by_lines.chunks] == [30, 30, 30, 10]
    by_bytes = split_file(src, tmp_path / "b", **{**base, "max_bytes": 25 * size + 5})
    assert all(c.bytes <= 25 * size + 5 for c in by_bytes.chunks) and sum(c.lines for c in by_bytes.chunks) == 100
    assert len(by_bytes.chunks) >= 4
    one = split_file(src, None, **base).chunks[0].tokens // 100 + 1
    by_tokens = split_file(src, tmp_path / "c", **{**base, "max_tokens": 20 * one})
    assert all(c.tokens <= 20 * one for c in by_tokens.chunks) and len(by_tokens.chunks) >= 5
    # The chunk files hold the lines, whole and in order.
    lines = [x for c in by_lines.chunks for x in c.path.read_text().splitlines()]
    assert lines == src.read_text().splitlines()


def test_bad_lines_refuse_the_file_with_their_numbers_and_nothing_is_uploaded(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 10, extra=["{broken", line(3), line(11, stream=True)])
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        jobs = jobs_for(fake, tmp_path)
        with pytest.raises(BatchInputError) as e:
            jobs.submit(src, name="bad")
        assert [p.line for p in e.value.problems] == [11, 12, 13]
        assert "line 12: custom_id \"r3\" appears more than once" in str(e.value)
        assert fake.files() == [] and jobs.store.job("bad") is None
        report = jobs.submit(src, name="bad", skip_bad_lines=True)
        assert report.job.rejected == 3 and report.succeeded == 10
        rejected = [json.loads(x)["line"] for x in (tmp_path / "state" / "bad" / "rejected.jsonl").read_text().splitlines()]
        assert rejected == [11, 12, 13]


def test_a_job_is_split_sent_and_collected_once_per_id(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 250)
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        jobs = jobs_for(fake, tmp_path, max_lines=60)
        report = jobs.submit(src, name="j")
        assert report.done and report.succeeded == 250 and report.pending == 0
        batches = fake_batches(fake)
        assert len(batches) == 5 and all(b["metadata"]["fleetgate_job"] == "j" for b in batches)
        assert sorted(b["request_counts"]["total"] for b in batches) == [10, 60, 60, 60, 60]
        answers, dead = collected(jobs, "j", tmp_path)
        assert set(answers) == {f"r{i}" for i in range(250)} and not dead
        # Inputs deleted when done; outputs kept (with the expiry asked for) until collected.
        files = fake.files()
        assert not any(f["purpose"] == "batch" for f in files)
        assert all(f["expires_at"] - f["created_at"] == 30 * 86400 for f in files)
        # The cost of every answer, at the batch price.
        usage = [a["response"]["body"]["usage"] for a in answers.values()]
        expected = sum(u["prompt_tokens"] * 0.40 + u["completion_tokens"] * 1.60 for u in usage) / 1e6 * 0.5
        assert report.cost == pytest.approx(expected)


def test_an_enqueued_token_refusal_holds_the_chunk_until_others_end(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 200)
    chunk_tokens = split_file(src, None, max_lines=50, max_bytes=1 << 30, max_tokens=1 << 40,
                              default_max_output=1024).chunks[0].tokens
    # Upstream takes one chunk at a time; fleetgate believes four fit.
    config = FakeConfig(models={MODEL: ModelLimits(batch_enqueued_tokens=chunk_tokens + 10)},
                        batch=QUICK.model_copy(update={"requests_per_second": 300}))
    with FakeOpenAI(config) as fake:
        jobs = jobs_for(fake, tmp_path, max_lines=50, enqueued_tokens={MODEL: 4 * chunk_tokens})
        report = jobs.submit(src, name="held")
        refused = [b for b in fake_batches(fake) if b["status"] == "failed"]
        assert refused and all(b["errors"]["data"][0]["code"] == "token_limit_exceeded" for b in refused)
        assert report.done and report.succeeded == 200
        answers, dead = collected(jobs, "held", tmp_path)
        assert len(answers) == 200 and not dead


def test_fleetgate_keeps_within_the_configured_enqueued_tokens(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 120)
    chunk_tokens = split_file(src, None, max_lines=40, max_bytes=1 << 30, max_tokens=1 << 40,
                              default_max_output=1024).chunks[0].tokens
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        jobs = jobs_for(fake, tmp_path, max_lines=40, enqueued_tokens={MODEL: chunk_tokens + 5})
        in_flight: list[int] = []
        jobs.on_progress = lambda r: in_flight.append(
            sum(c.state == "created" and c.batch_status not in ("completed", "expired", "cancelled") for c in r.chunks))
        report = jobs.submit(src, name="one-at-a-time")
        assert report.succeeded == 120 and max(in_flight) == 1
        assert not [b for b in fake_batches(fake) if b["status"] == "failed"]


def test_expired_batches_keep_their_answers_and_the_rest_is_sent_again(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 300)
    slow = QUICK.model_copy(update={"requests_per_second": 250, "completion_window_seconds": 0.5})
    with FakeOpenAI(FakeConfig(batch=slow)) as fake:
        jobs = jobs_for(fake, tmp_path, max_attempts=10)
        report = jobs.submit(src, name="exp")
        statuses = Counter(b["status"] for b in fake_batches(fake))
        assert statuses["expired"] >= 1 and report.succeeded == 300
        answers, dead = collected(jobs, "exp", tmp_path)
        assert len(answers) == 300 and not dead
        first = next(c for c in report.chunks if c.id == "c00000")
        assert first.batch_status == "expired" and first.counts["ok"] > 0 and first.counts["retried"] > 0


def test_per_line_failures_are_retried_and_permanent_ones_dead_lettered(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 400)
    faulty = QUICK.model_copy(update={"line_failure_rate": 0.3, "line_rejection_rate": 0.05})
    with FakeOpenAI(FakeConfig(seed=3, batch=faulty)) as fake:
        jobs = jobs_for(fake, tmp_path, max_attempts=2)
        report = jobs.submit(src, name="faults")
        answers, dead = collected(jobs, "faults", tmp_path)
        assert len(answers) + len(dead) == 400 and report.succeeded == len(answers)
        rejected = [d for d in dead.values() if d["error"].get("status_code") == 400]
        exhausted = [d for d in dead.values() if d["error"].get("status_code") == 500]
        assert rejected and all(d["attempts"] in (1, 2) for d in rejected)
        assert exhausted and all(d["attempts"] == 2 for d in exhausted)
        assert "the request was rejected" in rejected[0]["error"]["message"]
        # Retries were new batches of only the failed lines.
        retry_batches = [b for b in fake_batches(fake) if "-r2" in b["metadata"]["fleetgate_chunk"]]
        assert retry_batches and sum(b["request_counts"]["total"] for b in retry_batches) < 200


def test_cancel_from_another_pod_keeps_answers_and_dead_letters_the_rest(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 300)
    slow = QUICK.model_copy(update={"requests_per_second": 100})
    with FakeOpenAI(FakeConfig(batch=slow)) as fake:
        watcher, operator = jobs_for(fake, tmp_path, max_lines=100), jobs_for(fake, tmp_path, max_lines=100)
        watcher.submit(src, name="stop", wait=False)
        assert operator.store.take_lease("stop", "someone-else", 30) is None
        with pytest.raises(JobBusy, match="watched by someone-else"):  # one watcher at a time
            operator.watch("stop")
        operator.store.release_lease("stop", "someone-else")
        operator.cancel("stop")
        report = watcher.watch("stop")
        assert report.job.status == "cancelled"
        answers, dead = collected(watcher, "stop", tmp_path)
        assert len(answers) + len(dead) == 300 and dead
        assert all(d["error"]["code"] == "batch_cancelled" for d in dead.values())
        assert not any("-r" in b["metadata"]["fleetgate_chunk"] for b in fake_batches(fake)), "no retries after cancel"
        with pytest.raises(fg.FleetgateError, match="has ended"):
            operator.cancel("stop")


def test_duplicate_and_unknown_ids_in_the_output_are_reported_not_trusted(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 50)
    odd = QUICK.model_copy(update={"duplicate_lines": 3, "unknown_lines": 2})
    with FakeOpenAI(FakeConfig(batch=odd)) as fake:
        jobs = jobs_for(fake, tmp_path)
        report = jobs.submit(src, name="odd")
        chunk = report.chunks[0]
        assert chunk.counts["duplicates"] == 3 and chunk.counts["unknown"] == 2 and chunk.counts["ok"] == 50
        answers, dead = collected(jobs, "odd", tmp_path)
        assert set(answers) == {f"r{i}" for i in range(50)} and not dead


def test_a_spent_budget_refuses_the_job_and_answers_are_recorded_at_the_batch_price(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 40)
    budgets = {"limits": [{"scope": "feature", "name": "nightly", "dollars": 1.0, "period": "day"}]}
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        gate = fg.Gateway(base_url=fake.base_url, budgets=budgets,
                          batch={"directory": str(tmp_path / "state"), "poll_min_seconds": 0.02})
        jobs = gate.batches(api_key="sk-fake")
        report = jobs.submit(src, name="paid", feature="nightly")
        assert gate.costs(by="feature") == [("nightly", pytest.approx(report.cost))]
        budget = gate.budgets.applicable(fg.Scope(feature="nightly"))[0]
        gate.budgets.ledger.settle(gate.budgets.ledger.reserve([budget], 0.0), 5.0)  # spend the rest
        with pytest.raises(fg.BudgetExceeded, match="not submitted"):
            jobs.submit(src, name="paid-again", feature="nightly")
        assert jobs.store.job("paid-again") is None


def test_jobs_live_in_redis_for_the_whole_fleet(tmp_path: Path, store_url: str, name: str) -> None:
    src = write_input(tmp_path / "in.jsonl", 120)
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        settings = {"poll_min_seconds": 0.02, "poll_max_seconds": 0.2, "max_lines": 50}
        first = fg.Gateway(base_url=fake.base_url, redis_url=store_url,
                           batch={**settings, "directory": str(tmp_path / "a")}).batches(api_key="sk-fake")
        second = fg.Gateway(base_url=fake.base_url, redis_url=store_url,
                            batch={**settings, "directory": str(tmp_path / "b")}).batches(api_key="sk-fake")
        assert isinstance(first.store, RedisJobStore)
        first.submit(src, name=name, wait=False)
        # Another pod (another directory: no chunk files) shows it and finishes it.
        assert second.status(name)[0].job.lines == 120
        report = second.watch(name)
        assert report.succeeded == 120
        answers, dead = collected(second, name, tmp_path)
        assert len(answers) == 120 and not dead
        assert name in {j.id for j in first.store.jobs()}


def test_the_cli_submits_shows_and_collects(tmp_path: Path) -> None:
    src = write_input(tmp_path / "in.jsonl", 30)
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        config = tmp_path / "fleetgate.toml"
        config.write_text(f'base_url = "{fake.base_url}"\n[batch]\ndirectory = "{tmp_path / "state"}"\n'
                          "poll_min_seconds = 0.02\npoll_max_seconds = 0.2\n")
        common = ["--config", str(config), "--api-key", "sk-fake"]
        runner = CliRunner()
        result = runner.invoke(main, ["batch", "submit", str(src), "--name", "cli", *common])
        assert result.exit_code == 0, result.output
        assert "job cli: done" in result.output and "30 answered" in result.output
        result = runner.invoke(main, ["batch", "status", *common])
        assert "job cli: done" in result.output
        out = tmp_path / "out.jsonl"
        result = runner.invoke(main, ["batch", "collect", "cli", "--out", str(out), *common])
        assert result.exit_code == 0 and "30 answers" in result.output
        assert len(out.read_text().splitlines()) == 30
        result = runner.invoke(main, ["batch", "status", "nope", *common])
        assert result.exit_code == 1 and "no batch job 'nope'" in result.output
        run_out = tmp_path / "run.jsonl"
        result = runner.invoke(main, ["run", str(src), "--out", str(run_out), "--batch", "--name", "via-run", *common])
        assert result.exit_code == 0, result.output
        assert len(run_out.read_text().splitlines()) == 30


def test_killed_at_random_moments_the_job_ends_with_one_result_per_id_and_no_batch_twice(tmp_path: Path) -> None:
    import random
    import signal
    import subprocess
    import sys
    import time

    n = 3000
    src = write_input(tmp_path / "in.jsonl", n)
    timings = QUICK.model_copy(update={"requests_per_second": 10, "line_failure_rate": 0.03})
    rng = random.Random(7)
    with FakeOpenAI(FakeConfig(seed=5, batch=timings)) as fake:
        config = tmp_path / "fleetgate.toml"
        config.write_text(f'base_url = "{fake.base_url}"\n[batch]\ndirectory = "{tmp_path / "state"}"\n'
                          "max_lines = 250\npoll_min_seconds = 0.02\npoll_max_seconds = 0.1\nlease_seconds = 30\n")
        cmd = [sys.executable, "-m", "fleetgate.cli", "batch", "submit", str(src), "--name", "crash",
               "--config", str(config), "--api-key", "sk-fake"]
        kills = 0
        for _ in range(60):
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                proc.wait(timeout=rng.uniform(0.7, 1.6))  # start-up takes most of a second
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                if kills >= 20:
                    break
                continue
            assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
            break  # finished before it was killed
        assert kills >= 20
        final = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert final.returncode == 0, final.stderr
        assert "job crash: done" in final.stdout
        jobs = jobs_for(fake, tmp_path)
        answers, dead = collected(jobs, "crash", tmp_path)
        assert set(answers) | set(dead) == {f"r{i}" for i in range(n)}
        tries = Counter((b["metadata"]["fleetgate_chunk"], b["metadata"]["fleetgate_try"]) for b in fake.batches())
        assert tries and max(tries.values()) == 1, "a batch was created twice"
        per_chunk = Counter(b["metadata"]["fleetgate_chunk"] for b in fake.batches() if b["status"] != "failed")
        assert max(per_chunk.values()) == 1


class _Died(BaseException):
    """The process 'dies' here: nothing after this point is written."""


@pytest.mark.parametrize("step", ["uploaded", "created"])
def test_a_process_that_dies_between_a_call_and_its_record_is_reconciled(tmp_path: Path, step: str) -> None:
    src = write_input(tmp_path / "in.jsonl", 40)
    with FakeOpenAI(FakeConfig(batch=QUICK)) as fake:
        doomed = jobs_for(fake, tmp_path)
        save = doomed.store.save_chunks

        def die_on_record(job_id: str, chunks: list[Any]) -> None:
            if any(c.state == step for c in chunks):
                raise _Died
            save(job_id, chunks)

        doomed.store.save_chunks = die_on_record  # type: ignore[method-assign]
        with pytest.raises(_Died):
            doomed.submit(src, name="died")
        doomed.store.release_lease("died", doomed.owner)
        # The call was made, its result never recorded: the next process finds it.
        assert len(fake.files()) == 1 and len(fake.batches()) == (1 if step == "created" else 0)
        report = jobs_for(fake, tmp_path).watch("died")
        assert report.succeeded == 40
        assert len(fake.batches()) == 1, "the batch was not created again"

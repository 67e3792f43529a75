import re

import pytest
from click.testing import CliRunner

from fleetgate.cli import main
from fleetgate.demo import MODEL, ROLLOUT_UPSTREAM, UPSTREAM_LIMITS, rollout_episode, run_demo, semantic_episode, \
    upstream_line
from fleetgate.testing.fake_openai import FakeOpenAI


def test_demo_runs_the_workload_within_the_limits() -> None:
    summary, upstream = run_demo(requests=30, echo=False)
    assert summary.succeeded == 30 and summary.sent == 30
    # Unpaced, 30 requests at once would meet 10 refusals (upstream takes 20 a second); paced
    # at 95% of the limit, only scheduling jitter between deciding and arriving meets one.
    assert upstream["rate_limited"] <= 3, "the gateway paces the workload, upstream almost never refuses"


def test_demo_summary_names_the_binding_limit_and_where_the_time_went() -> None:
    summary, upstream = run_demo(requests=30, echo=False)
    # The workload's prompts and outputs make tokens the binding limit, whatever the pace:
    # both shares are of the same window.
    [use] = summary.quota_use({MODEL: UPSTREAM_LIMITS})
    assert use.binding == "tokens" and use.bound
    assert use.tokens_share is not None and use.requests_share is not None
    assert use.requests_share < use.tokens_share <= 1.0, "a short run uses no more than the limits allow"
    text = summary.render({MODEL: UPSTREAM_LIMITS})
    lines = text.splitlines()
    quota = next(line for line in lines if line.startswith("quota use, "))
    assert quota.startswith(f"quota use, {MODEL}: tokens bound the pace: tokens ")
    assert "of 200,000/min" in quota and "; requests " in quota and "of 1,200/min (" in quota
    assert "  waiting for token quota: p50 " in lines[lines.index(quota) + 3]
    assert any(line.startswith("  upstream: p50 ") for line in lines)
    p95 = next(line for line in lines if line.startswith("  the p95 request: "))
    assert "waiting for token quota" in p95 and " + upstream " in p95
    assert f"tokens: {summary.tokens['input']:,} in, {summary.tokens['output']:,} out" in text
    said = upstream_line(upstream, summary.elapsed)
    assert said.startswith(f"upstream counted {upstream['requests']} requests (")
    assert f" and {upstream['tokens_admitted']:,} tokens (" in said


def test_cli_demo_needs_redis_for_several_workers() -> None:
    out = CliRunner().invoke(main, ["demo", "--workers", "2"])
    assert out.exit_code == 2 and "--redis" in out.output


def test_cli_demo_shares_the_quota_through_redis(redis_url: str) -> None:
    out = CliRunner().invoke(main, ["demo", "--requests", "20", "--workers", "2", "--redis", redis_url])
    assert out.exit_code == 0, out.output
    assert "20 sent (20 ok" in out.output
    tokens = re.search(r"^tokens: ([\d,]+) in, ([\d,]+) out$", out.output, re.MULTILINE)
    assert tokens is not None, out.output
    assert all(int(n.replace(",", "")) > 0 for n in tokens.groups()), "every worker's tokens are counted"
    assert f"quota use, {MODEL}: " in out.output and "waiting for " in out.output


def test_demo_semantic_episode_serves_paraphrases_and_refuses_traps(fake_openai: FakeOpenAI) -> None:
    served = dict(semantic_episode(fake_openai.base_url, echo=False))
    assert served["how can I reset my password"].startswith("semantic")
    assert served["do you ship to canada"].startswith("semantic")
    assert served["How do I not reset my password?"] == "upstream (negation guard)"
    assert served["Can I change my delivery address 2 days after ordering?"] == "upstream (number guard)"
    assert served["Do you ship to Australia?"].startswith("upstream")


@pytest.mark.fake_openai(config=ROLLOUT_UPSTREAM)
def test_demo_rollouts_promote_the_healthy_canary_and_roll_back_the_flaky_one(fake_openai: FakeOpenAI) -> None:
    decisions = rollout_episode(fake_openai.base_url, echo=False)
    assert any(d.startswith("search-v3: 10% → 0% (rolled back)") for d in decisions), decisions
    assert any(d.startswith("support-v2: 50% → 100% (promoted to 100%)") for d in decisions), decisions

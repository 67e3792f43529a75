import pytest

import fleetgate as fg


def test_default_burst_is_about_a_seconds_share() -> None:
    q = fg.Quota("gpt-4.1", requests_per_minute=60_000, tokens_per_minute=6_000_000)
    assert (q.request_capacity, q.token_capacity) == (1_000, 100_000)
    q = fg.Quota("gpt-4.1", requests_per_minute=600, burst_seconds=5)
    assert q.request_capacity == 50
    q = fg.Quota("gpt-4.1", tokens_per_minute=30_000, token_burst=20_000)
    assert q.token_capacity == 20_000 and q.requests_per_minute is None


def test_sliding_window_holds_the_whole_minute() -> None:
    q = fg.Quota("w", requests_per_minute=500, algorithm="sliding_window")
    assert q.request_capacity == 500 and q.algorithm == "sliding_window"


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [
        ({"requests_per_minute": 0}, fg.ConfigError, "requests_per_minute must be a positive"),
        ({"tokens_per_minute": -3}, fg.ConfigError, "tokens_per_minute must be a positive"),
        ({"requests_per_minute": 10**13}, fg.ConfigError, "absurdly large"),
        ({"requests_per_minute": 10**40}, fg.ConfigError, "absurdly large"),
        ({}, fg.ConfigError, "limits nothing"),
        ({"requests_per_minute": 1.5}, fg.ConfigError, "whole number"),
        ({"requests_per_minute": "100"}, TypeError, "whole number"),
        ({"requests_per_minute": True}, TypeError, "bool"),
        ({"requests_per_minute": 10, "algorithm": "leaky"}, fg.ConfigError, "unknown algorithm"),
        ({"requests_per_minute": 10, "burst_seconds": 0}, fg.ConfigError, "burst_seconds"),
        ({"requests_per_minute": 10, "burst_seconds": float("inf")}, fg.ConfigError, "burst_seconds"),
        ({"requests_per_minute": 10, "request_burst": 11}, fg.ConfigError, "exceeds"),
        ({"tokens_per_minute": 10, "request_burst": 1}, fg.ConfigError, "request_burst given without"),
        ({"requests_per_minute": 10, "algorithm": "sliding_window", "request_burst": 2}, fg.ConfigError, "token_bucket algorithm only"),
    ],
)
def test_bad_quotas_are_refused_with_a_named_reason(kwargs: dict, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle):
        fg.Quota("q", **kwargs)


def test_bad_names() -> None:
    with pytest.raises(fg.ConfigError, match="non-empty"):
        fg.Quota("", requests_per_minute=1)
    with pytest.raises(TypeError, match="name must be a str"):
        fg.Quota(42, requests_per_minute=1)  # type: ignore[arg-type]


def test_equality_and_hash_follow_the_definition() -> None:
    a = fg.Quota("gpt", requests_per_minute=10)
    assert a == fg.Quota("gpt", requests_per_minute=10)
    assert a != fg.Quota("gpt", requests_per_minute=11)
    assert len({a, fg.Quota("gpt", requests_per_minute=10)}) == 1
    assert repr(a) == 'Quota("gpt", requests_per_minute=10, algorithm="token_bucket")'


def test_parse_duration_reads_openai_reset_headers() -> None:
    assert fg.parse_duration("6m0s") == 360.0
    assert fg.parse_duration("20ms") == pytest.approx(0.02)
    assert fg.parse_duration("23h18m29.144s") == pytest.approx(83909.144)
    with pytest.raises(fg.ConfigError, match="invalid duration"):
        fg.parse_duration("soon")


@pytest.mark.parametrize("kind", ["user", "feature", "team"])
def test_a_scope_quota_admits_its_whole_minute_at_once_and_then_spreads(kind: str) -> None:
    """requests_per_minute = 5 for a user, feature or team: five calls at once, the sixth
    refused until a fifth of the minute has refilled one."""
    five = fg.QuotaLimits(requests_per_minute=5)
    gate = fg.Gateway(per_user=five, features={"search": five}, teams={"research": five},
                      models={"gpt-4.1-mini": fg.QuotaLimits(requests_per_minute=600)})
    sc = fg.Scope(**{kind: {"user": "u-1", "feature": "search", "team": "research"}[kind]})
    model_quota, quotas = gate.quotas_for("gpt-4.1-mini", sc)
    assert model_quota is not None and model_quota.request_capacity == 9, "a model's: one second's share"
    (quota,) = [q for q in quotas if q is not model_quota]
    assert quota.request_capacity == 5
    for _ in range(5):
        assert gate.limiter.try_acquire([quota])
    sixth = gate.limiter.try_acquire([quota])
    assert not sixth and sixth.retry_after > 5, "one call's room comes back every 12 s"
    gate.close()


def test_a_scope_quota_bursts_as_configured() -> None:
    gate = fg.Gateway(per_user=fg.QuotaLimits(requests_per_minute=60, burst_seconds=1),
                      teams={"t": fg.QuotaLimits(requests_per_minute=60, algorithm="sliding_window")})
    _, (user, team) = gate.quotas_for("gpt-4.1-mini", fg.Scope(user="u-1", team="t"))
    assert (user.request_capacity, team.request_capacity) == (1, 60)
    with pytest.raises(ValueError, match="burst_seconds applies to the token_bucket algorithm only"):
        fg.QuotaLimits(requests_per_minute=60, algorithm="sliding_window", burst_seconds=1)
    gate.close()

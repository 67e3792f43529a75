import fleetgate
import fleetgate.errors
import fleetgate.testing
import fleetgate.testing.fake_openai


def test_all_names_exist_and_are_public() -> None:
    for module in (fleetgate, fleetgate.errors, fleetgate.testing, fleetgate.testing.fake_openai):
        for member in module.__all__:
            assert hasattr(module, member), f"{module.__name__}.__all__ names missing {member}"
    # (pytest's assertion rewriting may add "@py_…" names to modules of plugins: not ours.)
    public = {n for n in dir(fleetgate) if n.isidentifier() and not n.startswith("_")}
    # Submodules are reachable as attributes once imported; everything else must be exported.
    submodules = {"errors", "testing", "cli", "demo", "config", "estimate", "gateway", "scope", "path", "stats", "run", "prices", "fallback", "dedup", "budget", "rewrite", "sdk", "cache", "sharing", "router", "validate", "records", "metrics", "tracing", "batch", "modes", "prompts", "check", "outage", "redis_clients", "warm", "privacy", "summary", "tiers", "endpoints",
                  "seen_models", "price_listing", "chains", "background", "webhooks", "deployments", "serve"}
    assert public - submodules <= set(fleetgate.__all__)


def test_errors_share_one_base_and_match_stdlib_meanings() -> None:
    assert issubclass(fleetgate.ConfigError, ValueError)
    assert issubclass(fleetgate.StoreUnavailable, ConnectionError)
    for cls in (fleetgate.ConfigError, fleetgate.RateLimited, fleetgate.StoreUnavailable, fleetgate.CircuitOpen):
        assert issubclass(cls, fleetgate.FleetgateError)

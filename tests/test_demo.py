from click.testing import CliRunner

from fleetgate.cli import main
from fleetgate.demo import run_limiter_demo


def test_demo_uses_the_allowance_and_never_exceeds_it() -> None:
    result = run_limiter_demo(callers=8, seconds=1.5, echo=False)
    assert result.admitted_requests <= result.request_allowance
    assert result.admitted_tokens <= result.token_allowance
    assert result.admitted_requests >= 0.8 * result.request_allowance


def test_cli_demo_runs() -> None:
    out = CliRunner().invoke(main, ["demo", "--callers", "4", "--seconds", "1"])
    assert out.exit_code == 0, out.output
    assert "never over" in out.output

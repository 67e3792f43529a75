"""The README's examples are tests: every ```python block runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", [
    # instructor cannot share a virtualenv with the newest openai: `make test-floor` runs it.
    pytest.param(block, id=f"block{i}", marks=[pytest.mark.instructor] if "import instructor" in block else [])
    for i, block in enumerate(BLOCKS)])
def test_readme_example_runs(block: str) -> None:
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})


def test_readme_shows_each_library_going_through_the_gateway() -> None:
    """The section on other libraries has an example per library (each runs above), and
    each checks that its calls went through the gateway."""
    section = README.read_text().split("### Using fleetgate with other libraries\n", 1)[1].split("\n### ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    for uses in ("httpx2.Client(transport=gate.transport(", "httpx2.AsyncClient(transport=gate.async_transport(",
                 "from langchain_openai import", "from agents import", "from pydantic_ai import",
                 "import instructor"):
        checked = [b for b in blocks if uses in b and 'assert gate.stats["requests"] ==' in b]
        assert checked, f"no example in the section uses {uses!r} and checks the gateway's count"
    assert any("fg.BypassWarning" in b for b in blocks)


def test_readme_config_files_load(tmp_path: Path) -> None:
    from fleetgate.testing.fake_openai import load_config

    import fleetgate as fg

    toml_blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(toml_blocks) == 4
    for i, block in enumerate(toml_blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(block)
        if "redis_url" in block:
            assert fg.GatewayConfig.from_toml(path).models["gpt-4.1"].tokens_per_minute == 30_000
        elif "[[deployments." in block:
            sweden = fg.GatewayConfig.from_toml(path).deployments["gpt-4.1-mini"][1]
            assert (sweden.azure_deployment, sweden.weight) == ("gpt41mini", 2)
        elif "[routing." in block:
            assert fg.GatewayConfig.from_toml(path).routing.rollouts["support-v2"].canary.version == "v2"
        else:
            load_config(path)

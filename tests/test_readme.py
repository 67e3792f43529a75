"""The README's examples are tests: every ```python block runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(block: str) -> None:
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})


def test_readme_config_files_load(tmp_path: Path) -> None:
    from fleetgate.testing.fake_openai import load_config

    import fleetgate as fg

    toml_blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert len(toml_blocks) == 3
    for i, block in enumerate(toml_blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(block)
        if "redis_url" in block:
            assert fg.GatewayConfig.from_toml(path).models["gpt-4.1"].tokens_per_minute == 30_000
        elif "[routing." in block:
            assert fg.GatewayConfig.from_toml(path).routing.rollouts["support-v2"].canary.version == "v2"
        else:
            load_config(path)

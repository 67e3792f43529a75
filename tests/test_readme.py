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


def test_readme_fake_openai_config_loads(tmp_path: Path) -> None:
    from fleetgate.testing.fake_openai import load_config

    toml_blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)
    assert toml_blocks
    for i, block in enumerate(toml_blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(block)
        load_config(path)

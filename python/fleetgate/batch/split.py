"""Checking a Batch API input file and cutting it into chunk files, before anything is
uploaded: the checks and the sizing run in the Rust core (``Splitter``), block by block,
with the GIL released, after each line's body is checked for its endpoint
(:class:`~fleetgate.batch.lines.BodyChecks`); files of the endpoints the core does not size
(embeddings, with their 50,000 inputs per batch, and images) are checked and cut by
:class:`~fleetgate.batch.lines.LineSplitter`. This module moves bytes from the input to the
chunk files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from fleetgate._core import Splitter
from fleetgate.batch.lines import SIZED_HERE, BodyChecks, LineSplitter, first_endpoint

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
               endpoint: str | None = None, prefix: str = "chunk-", max_inputs: int | None = None) -> SplitResult:
    """Check every line of `input_path` and write its sendable lines to chunk files
    ``<prefix>NNNNN.jsonl`` in `directory` (each fsynced), each within the limits
    (`max_tokens` enqueued tokens, or `model_tokens` of the file's model; for embeddings,
    `max_inputs` inputs, by default the Batch API's 50,000). The file's endpoint is
    `endpoint`, else its first line's. With `directory` None, only check and size
    (nothing is written)."""
    endpoint = endpoint or first_endpoint(input_path)
    splitter: Splitter | LineSplitter
    checks: BodyChecks | None = None
    if endpoint in SIZED_HERE:
        splitter = LineSplitter(max_lines=max_lines, max_bytes=max_bytes, max_tokens=max_tokens,
                                model_tokens=model_tokens, endpoint=endpoint, max_inputs=max_inputs)
    else:
        splitter = Splitter(max_lines=max_lines, max_bytes=max_bytes, max_tokens=max_tokens,
                            model_tokens=model_tokens, endpoint=endpoint, default_max_output=default_max_output)
        checks = BodyChecks(endpoint)
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
                blanked: list[tuple[int, str]] = []
                if checks is not None:
                    block, blanked = checks.check(block)
                    problems.extend(Problem(number, reason) for number, reason in blanked)
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
                    run = block[start:end]
                    if blanked:  # the core runs over blank lines: the blanked ones stay out
                        run = b"\n".join(line for line in run.split(b"\n") if line.strip())
                    chunk.lines += lines
                    chunk.bytes += len(run) + 1
                    chunk.tokens += tokens
                    chunk.output_tokens += output_tokens
                    if out is not None:
                        out.write(run)
                        out.write(b"\n")
                if not data:
                    break
    finally:
        if out is not None:
            _close(out)
    problems.sort(key=lambda p: p.line)
    return SplitResult(splitter.endpoint, splitter.model, splitter.lines_read, chunks, problems)


def _close(out: BinaryIO) -> None:
    out.flush()
    os.fsync(out.fileno())
    out.close()

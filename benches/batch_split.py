"""Checking and splitting a Batch API input file: lines per second and peak memory.

    python benches/batch_split.py --lines 1000000 [--endpoint embeddings]

Writes a file of chat requests (each with a shared system prompt and its own question),
then validates and splits it into chunk files as ``fleetgate batch submit`` does, in a
fresh process so that the peak resident memory is the split's own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "You are a support assistant. Classify the ticket as billing, bug, account or other, and say why."


def write(path: Path, lines: int, shared_prompt: bool, endpoint: str = "chat") -> None:
    with path.open("w") as out:
        for i in range(lines):
            if endpoint == "embeddings":  # sized and cut in Python (the 50,000-input limit)
                texts = [f"Ticket {i}: my invoice for March shows a double charge", f"order {i * 7919 % 1000003}"]
                if shared_prompt:
                    texts.insert(0, SYSTEM)
                out.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/embeddings",
                                      "body": {"model": "text-embedding-3-small", "input": texts}}) + "\n")
                continue
            messages = [{"role": "user", "content": f"Ticket {i}: my invoice for March shows a double charge of "
                                                    f"${i % 97}.{i % 89:02d}; order {i * 7919 % 1000003}."}]
            if shared_prompt:
                messages.insert(0, {"role": "system", "content": SYSTEM})
            out.write(json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": {"model": "gpt-4.1-mini", "messages": messages, "max_tokens": 64}}) + "\n")


def measure(path: Path) -> None:
    from fleetgate.batch import split_file

    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = split_file(path, folder, max_lines=50_000, max_bytes=200 * 1024 * 1024, max_tokens=20_000_000,
                            default_max_output=1024)
        elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"lines": result.lines, "chunks": len(result.chunks), "problems": len(result.problems),
                      "seconds": round(elapsed, 2), "lines_per_second": round(result.lines / elapsed),
                      "peak_rss_mb": round(peak)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--endpoint", choices=("chat", "embeddings"), default="chat",
                        help="chat: checked and sized by the Rust core; embeddings: by fleetgate.batch.lines.")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure)
        return
    with tempfile.TemporaryDirectory() as folder:
        for shared in (True, False):
            path = Path(folder) / "input.jsonl"
            write(path, args.lines, shared, args.endpoint)
            size = path.stat().st_size / 1e6
            print(f"{args.lines:,} lines ({size:.0f} MB), {'a shared system prompt' if shared else 'no shared prompt'}:")
            subprocess.run([sys.executable, __file__, "--measure", str(path)], check=True)


if __name__ == "__main__":
    main()

"""Generate the sync request path from the async source.

    python scripts/unasync.py           # write python/fleetgate/path/_sync/ from _async/
    python scripts/unasync.py --check   # exit 1, naming them, when generated files are stale

The layers are written once, as async code; their sync twins differ only in spelling
(``await`` dropped, ``async def`` made ``def``, ``*_async`` methods and ``Async*`` classes
named for their sync twins), so they are made by the substitutions below, line by line,
and never edited by hand. ``make test`` runs the check.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "python" / "fleetgate" / "path" / "_async"
TARGET = ROOT / "python" / "fleetgate" / "path" / "_sync"

#: (pattern, replacement), applied in order to every line.
SUBSTITUTIONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(pattern), replacement)
    for pattern, replacement in [
        (r"\basync def\b", "def"),
        (r"\basync for\b", "for"),
        (r"\basync with\b", "with"),
        (r"\bawait ", ""),
        (r"\bfleetgate\.path\._async\b", "fleetgate.path._sync"),
        (r"\bAwaitable\[httpx2\.Response\]", "httpx2.Response"),
        (r"\bAwaitable, ", ""),
        (r"\bAsyncByteStream\b", "SyncByteStream"),
        (r"\bAsyncIterator\b", "Iterator"),
        (r"\bAsync(GateTransport|BaseTransport|HTTPTransport)\b", r"\1"),
        (r"\bhandle_async_request\b", "handle_request"),
        (r"\b__aiter__\b", "__iter__"),
        (r"\baclose\b", "close"),
        (r"\baread\b", "read"),
        (r"\basync_openai\b", "openai"),
        (r"\b(\w+)_async\b", r"\1"),
        (r"\basync\b", "sync"),
    ]
]

HEADER = "# Generated from fleetgate/path/_async/{name} by scripts/unasync.py: edit that file, then run the script.\n"


def unasync(text: str) -> str:
    """`text` (an async module) as its sync twin."""
    lines = []
    for line in text.splitlines(keepends=True):
        for pattern, replacement in SUBSTITUTIONS:
            line = pattern.sub(replacement, line)
        lines.append(line)
    return "".join(lines)


def generated() -> dict[Path, str]:
    """Every sync file, by path, as it should read."""
    return {TARGET / source.name: HEADER.format(name=source.name) + unasync(source.read_text())
            for source in sorted(SOURCE.glob("*.py")) if source.name != "__init__.py"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when a generated file is stale; write nothing")
    args = parser.parse_args(argv)
    wanted = generated()
    stale = sorted(str(path.relative_to(ROOT)) for path, text in wanted.items()
                   if not path.exists() or path.read_text() != text)
    extra = sorted(str(path.relative_to(ROOT)) for path in TARGET.glob("*.py")
                   if path not in wanted and path.name != "__init__.py")
    if args.check:
        if stale or extra:
            for name in stale:
                print(f"stale: {name}", file=sys.stderr)
            for name in extra:
                print(f"no async source: {name}", file=sys.stderr)
            print("run `python scripts/unasync.py` and commit the result", file=sys.stderr)
            return 1
        return 0
    TARGET.mkdir(exist_ok=True)
    for path, text in wanted.items():
        path.write_text(text)
    for name in extra:
        (ROOT / name).unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a new pod pays before its calls are fast, in one run: ``import fleetgate`` and
``import fleetgate.gateway`` against ``import openai`` (``-X importtime``, fresh processes,
interleaved), ``fleetgate --help``'s
wall time, and a fresh process's first call through ``gate.openai()`` against its tenth
(:mod:`first_call`'s "right after ``Gateway()``" case, FakeOpenAI, embedded store).

    python benches/startup.py [--runs 5]

Reports medians over `runs` fresh processes, and the import ratio the project holds to
(``import fleetgate`` at most 1.3 times ``import openai``).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_overhead import fake_server  # noqa: E402

FIRST_CALL = Path(__file__).resolve().parent / "first_call.py"


def import_ms(module: str) -> float:
    """The cumulative import time of `module` in a fresh interpreter, from ``-X importtime``."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], check=True,
                         capture_output=True, text=True).stderr
    for row in err.splitlines():
        found = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*" + re.escape(module) + r"$", row)
        if found:
            return int(found.group(1)) / 1000
    raise RuntimeError(f"-X importtime printed no line for {module}")


def help_ms() -> float:
    command = shutil.which("fleetgate", path=str(Path(sys.executable).parent))
    if command is None:
        raise RuntimeError("no fleetgate command beside this interpreter: install the package (make build)")
    start = time.perf_counter()
    subprocess.run([command, "--help"], check=True, capture_output=True)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per figure")
    args = parser.parse_args()
    fleetgate, gateway, openai = [], [], []
    for _ in range(args.runs):  # interleaved: drift hits all alike
        fleetgate.append(import_ms("fleetgate"))
        gateway.append(import_ms("fleetgate.gateway"))
        openai.append(import_ms("openai"))
    ours, theirs = statistics.median(fleetgate), statistics.median(openai)
    print(f"import fleetgate {ours:.1f} ms, import openai {theirs:.1f} ms (medians of {args.runs}): "
          f"ratio {ours / theirs:.2f} (at most 1.30)")
    whole = statistics.median(gateway)
    print(f"import fleetgate.gateway (what `fleetgate.Gateway` loads, openai included) {whole:.1f} ms: "
          f"{whole / theirs:.2f} times import openai")
    helps = [help_ms() for _ in range(args.runs)]
    print(f"fleetgate --help: {statistics.median(helps):.0f} ms wall (median of {args.runs}; "
          f"range {min(helps):.0f}-{max(helps):.0f})")
    with fake_server() as base_url:
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, str(FIRST_CALL), "--child", "call", "--base-url", base_url],
                                 check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
    first = statistics.median(run["first"] for run in runs)
    rest = statistics.median(run["rest"] for run in runs)
    print(f"a fresh process's first call {first:.1f} ms (its wait for the warm-up included), calls 2-10 "
          f"{rest:.1f} ms (medians of {args.runs}); Gateway() itself "
          f"{statistics.median(run['gateway'] for run in runs):.1f} ms")


if __name__ == "__main__":
    main()

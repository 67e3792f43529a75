"""Throughput of the fake OpenAI server on loopback, so it is never a test's bottleneck.

wrk (Debian's package) drives simple chat completions at 64 connections for --seconds
against a server with limits nobody reaches; also GET /v1/models. Reports requests/s.

    python benches/fake_openai_throughput.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from fleetgate.testing.fake_openai import FakeConfig, FakeOpenAI, ModelLimits

LUA = """
wrk.method = "POST"
wrk.body = '%s'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-fake"
"""


def run_wrk(url: str, seconds: float, script: Path | None) -> float:
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds:.0f}s", "--latency"]
    if script is not None:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} requests failed:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    for line in out.splitlines():
        if re.match(r"\s+(50|99)%", line):
            print(f"    latency p{line.split()[0].rstrip('%')}: {line.split()[1]}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16})
    huge = ModelLimits(requests_per_minute=10**9, tokens_per_minute=10**12)
    with FakeOpenAI(FakeConfig(models={"bench": huge})) as fake, tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "chat.lua"
        script.write_text(LUA % body)
        models = run_wrk(f"{fake.base_url}/models", args.seconds, None)
        print(f"  GET /v1/models:             {models:>9,.0f} requests/s")
        chat = run_wrk(f"{fake.base_url}/chat/completions", args.seconds, script)
        print(f"  POST /v1/chat/completions:  {chat:>9,.0f} requests/s (target >= 3,000)")
        print(f"  server counted {fake.counters('bench').requests:,} chat requests")


if __name__ == "__main__":
    main()

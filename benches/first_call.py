"""A fresh process's first call through ``gate.openai()`` against its tenth, against
FakeOpenAI (in its own process) with the embedded store: once calling right after
``Gateway()`` (the call waits for the warm-up, outside its deadline), once after
``gate.ready()``. Each run is a fresh subprocess, as a new pod is. Also measured alone, in
fresh processes: what the warm-up loads (the ``o200k_base`` tokenizer; with
``--semantic``, the local embedder too), which a first call used to pay inside its deadline.

    python benches/first_call.py [--runs 5] [--semantic]

Reports, per case, the median over runs of: ``Gateway()``, the wait in ``ready()``, the
first call, and the median of calls 2-10 (milliseconds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_overhead import MODEL, MSG, fake_server  # noqa: E402


def child(case: str, base_url: str, semantic: bool) -> dict[str, float]:
    """One fresh process's figures, in milliseconds."""
    if case == "load":
        from fleetgate._core import count_tokens

        start = time.perf_counter()
        count_tokens(MODEL, "hello")
        figures = {"tokenizer": (time.perf_counter() - start) * 1000}
        if semantic:
            from fleetgate.cache import LocalEmbedder

            start = time.perf_counter()
            LocalEmbedder().load()
            figures["embedder"] = (time.perf_counter() - start) * 1000
        return figures
    import fleetgate as fg

    settings: dict[str, object] = {}
    if semantic:
        settings["cache"] = {"enabled": True, "semantic": {"enabled": True}}
    start = time.perf_counter()
    gate = fg.Gateway(base_url=base_url, redis_url=None, metrics={"enabled": False},
                      models={MODEL: fg.QuotaLimits(requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000)},
                      **settings)
    made = time.perf_counter()
    ready = 0.0
    if case == "ready":
        gate.ready()
        ready = time.perf_counter() - made
    client = gate.openai(api_key="sk-fake")
    took: list[float] = []
    with gate:
        for i in range(10):
            start_call = time.perf_counter()
            # A distinct prompt per call: no cache answers it.
            client.chat.completions.create(model=MODEL, max_tokens=16, messages=[
                {"role": "user", "content": f"{MSG[0]['content']} ({i})"}])
            took.append(time.perf_counter() - start_call)
    return {"gateway": (made - start) * 1000, "ready": ready * 1000, "first": took[0] * 1000,
            "rest": statistics.median(took[1:]) * 1000, "warm_waits": float(gate.stats["warm_waits"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per case")
    parser.add_argument("--semantic", action="store_true", help="the semantic cache on (local embedder)")
    parser.add_argument("--child", choices=["load", "call", "ready"], help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.base_url or "", args.semantic)))
        return
    extra = ["--semantic"] if args.semantic else []
    with fake_server() as base_url:
        for case, title in (("load", "what the warm-up loads, alone"), ("call", "first call right after Gateway()"),
                            ("ready", "first call after gate.ready()")):
            runs = []
            for _ in range(args.runs):
                out = subprocess.run([sys.executable, __file__, "--child", case, "--base-url", base_url, *extra],
                                     check=True, capture_output=True, text=True).stdout
                runs.append(json.loads(out.strip().splitlines()[-1]))
            medians = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            shown = ", ".join(f"{key} {value:.1f}" + ("" if key == "warm_waits" else " ms")
                              for key, value in medians.items())
            print(f"{title} (median of {args.runs} fresh processes): {shown}")


if __name__ == "__main__":
    main()

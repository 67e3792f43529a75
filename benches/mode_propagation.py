"""How long an operator's mode takes to reach the pods: `--pods` processes each run a
gateway on one Redis; the bench sets a mode (as `fleetgate mode set` does), and every pod
reports when its gateway first serves in it. Repeated `--rounds` times, alternating two
modes; prints the median and worst propagation over all pods and rounds.

    python benches/mode_propagation.py [--pods 4] [--rounds 20] [--cluster]
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import statistics
import time
from typing import Any

import fleetgate as fg
from fleetgate.modes import ModeStore
from fleetgate.testing import RedisRig


def pod(redis_url: str, rounds: int, ready: Any, seen: Any) -> None:
    logging.getLogger("fleetgate").setLevel(logging.ERROR)  # each pod would log every change
    gate = fg.Gateway(redis_url=redis_url)
    ready.put(True)
    for i in range(rounds):
        want = "cached-only" if i % 2 == 0 else "static"
        end = time.time() + 10
        while gate.modes.current.mode != want and time.time() < end:
            time.sleep(0.001)
        seen.put((i, time.time() if gate.modes.current.mode == want else None))
    gate.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster instead of a standalone server")
    args = parser.parse_args()
    with RedisRig() as rig:
        url = rig.start_cluster() if args.cluster else rig.start_standalone()
        store = ModeStore(url)
        store.clear()
        ctx = multiprocessing.get_context("spawn")
        ready, seen = ctx.Queue(), ctx.Queue()
        pods = [ctx.Process(target=pod, args=(url, args.rounds, ready, seen)) for _ in range(args.pods)]
        for p in pods:
            p.start()
        for _ in pods:
            ready.get(timeout=60)
        delays: list[float] = []
        missed = 0
        for i in range(args.rounds):
            time.sleep(0.3)  # rounds do not line up with the pods' judging ticks
            at = time.time()
            store.set("cached-only" if i % 2 == 0 else "static", 60, "bench")
            for _ in pods:
                _, when = seen.get(timeout=30)
                if when is None:
                    missed += 1
                else:
                    delays.append(when - at)
        for p in pods:
            p.join(timeout=30)
        store.clear()
        store.close()
    delays.sort()
    print(f"{args.pods} pods × {args.rounds} rounds ({'cluster' if args.cluster else 'standalone'}), "
          f"[modes] evaluate_every_seconds = {fg.GatewayConfig().modes.evaluate_every_seconds}")
    print(f"  propagation: median {statistics.median(delays) * 1000:.0f} ms, "
          f"p99 {delays[min(len(delays) - 1, int(0.99 * len(delays)))] * 1000:.0f} ms, "
          f"worst {delays[-1] * 1000:.0f} ms; missed {missed}")


if __name__ == "__main__":
    main()

"""The platform's hooks under load: wall time of `hooks/monitor` and
`hooks/health-check` on a node serving a steady stream of predictions, against the same
hooks on the same node idle, measured in one run.

    python bench/hooks.py [--runs 10] [--concurrency 8]

One node (agent, Envoy, built-in model server) runs on a fresh loopback address. The
monitor must print within 5 s (the platform's rule); the ratio loaded / idle says what
load costs the hooks. Each hook run is a new process, as the platform runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent import PROJECT_ROOT  # noqa: E402
from tests.harness.addresses import allocate_loopback_ip  # noqa: E402
from tests.harness.foundation_trees import single_node_tree  # noqa: E402
from tests.harness.load import Load  # noqa: E402
from tests.harness.node import Node  # noqa: E402

HOOKS = ("monitor", "health-check")


def run_hook(data_dir: Path, name: str) -> float:
    """Seconds one hook run takes; fails loudly on a non-zero exit."""
    env = {**os.environ, "INFERENCE_AGENT_DATA_DIR": str(data_dir)}
    started = time.monotonic()
    out = subprocess.run([str(PROJECT_ROOT / "hooks" / name)], env=env, capture_output=True, text=True, timeout=30)
    seconds = time.monotonic() - started
    if out.returncode != 0:
        raise SystemExit(f"{name} exited {out.returncode}: {out.stderr or out.stdout}")
    return seconds


async def measure(data_dir: Path, runs: int) -> dict[str, list[float]]:
    """Wall times of each hook, `runs` times."""
    return {name: [await asyncio.to_thread(run_hook, data_dir, name) for _ in range(runs)] for name in HOOKS}


async def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hooks-") as tmp:
        node = Node(Path(tmp), single_node_tree(allocate_loopback_ip(), **{"enable.access.log": "false"}))
        node.install_models()
        node.start()
        try:
            await asyncio.to_thread(node.wait_serving)
            await asyncio.sleep(3)  # the monitor's sampler has readings
            idle = await measure(node.data_dir, args.runs)
            async with Load(node.ip, concurrency=args.concurrency, max_seconds=600) as load:
                await load.wait_requests(200)
                loaded = await measure(node.data_dir, args.runs)
            rps = load.result.ok / max(1e-9, sum(load.result.latencies) / args.concurrency)
        finally:
            node.stop()
    print(f"load: {load.result} (~{rps:.0f} predictions/s through Envoy, {args.concurrency} clients)")
    print(f"{'hook':<14}{'idle median':>13}{'loaded median':>15}{'loaded max':>12}{'ratio':>8}")
    worst = 0.0
    for name in HOOKS:
        i, m = statistics.median(idle[name]), statistics.median(loaded[name])
        worst = max(worst, max(loaded[name]))
        print(f"{name:<14}{i:>12.3f}s{m:>14.3f}s{max(loaded[name]):>11.3f}s{m / i:>8.2f}")
    print(f"monitor within the platform's 5 s under load: {'yes' if max(loaded['monitor']) < 5 else 'NO'}")
    return 0 if worst < 5 and load.result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""How fast a metadata change reaches Envoy, per metadata source.

Black-box: for each source (file, etcd, metad) the benchmark starts a real node agent
(`inference-agent run --metadata <spec> --data-dir D`) on its own loopback address,
then changes one leaf N times (the `ip` of a second serving node) and measures, for
each change, the time from the write to Envoy's admin `/clusters` listing the new
upstream address. It prints p50/p99/max per source and the ratio of each network source
against the file source (the reference, measured in the same run).

etcd is a real etcd (Debian etcd-server); metad is the metad TEST DOUBLE from
tests/harness/metad_double.py (metad itself cannot be installed here), with metad's 100 ms
debounce, which the file and etcd sources do not have.

    python bench/propagation.py [--changes 100] [--sources file,etcd,metad] [--assert-p99 0.3]

Exits 1 when the p99 of the etcd or metad source exceeds --assert-p99 seconds (default: the
acceptance target, 0.3 s over 100 changes).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.addresses import allocate_loopback_ip  # noqa: E402
from tests.harness.etcd_process import EtcdProcess, ports_free  # noqa: E402
from tests.harness.metad_double import MetadDouble  # noqa: E402
from tests.harness.node import Node  # noqa: E402

EXAMPLE = ROOT / "examples" / "single-node.yaml"
ETCD_PREFIX = "/inference/bench"
CLUSTER = "serving_rest"
ADMIN_PORT = 8001


@dataclass
class Result:
    source: str
    seconds: list[float]

    def percentile(self, q: float) -> float:
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds)

    @property
    def p99(self) -> float:
        return self.percentile(0.99)


def node_tree(ip: str, peer_ip: str) -> dict:
    """The shipped single-node tree moved to `ip`, plus a second serving node at `peer_ip`."""
    tree = yaml.safe_load(EXAMPLE.read_text())
    tree["host"]["ip"] = ip
    (me,) = tree["hosts"]["model_serving"].values()
    me["ip"] = ip
    tree["hosts"]["model_serving"]["i-peer"] = {"ip": peer_ip, "instance_id": "i-peer", "role": "model_serving",
                                                "sid": "2"}
    return tree


def peer_ips(count: int) -> list[str]:
    """Distinct addresses for the second node, one per change (never used for traffic)."""
    return [f"127.250.{i // 250}.{i % 250 + 2}" for i in range(count + 1)]


async def upstreams(session: aiohttp.ClientSession, admin: str) -> set[str]:
    """Addresses in Envoy's serving cluster (empty while Envoy is not up)."""
    try:
        async with session.get(f"{admin}/clusters", params={"format": "json"},
                               timeout=aiohttp.ClientTimeout(total=1)) as resp:
            body = json.loads(await resp.text())
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return set()
    for c in body.get("cluster_statuses", []):
        if c["name"] == CLUSTER:
            return {h["address"]["socket_address"]["address"] for h in c.get("host_statuses", [])}
    return set()


async def wait_upstream(session: aiohttp.ClientSession, admin: str, ip: str, timeout: float,
                        agent: Node | None = None) -> float:
    """Poll /clusters until `ip` is an upstream; returns when it was seen (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        if ip in await upstreams(session, admin):
            return time.monotonic()
        if agent and agent.proc.poll() is not None:
            raise RuntimeError(f"agent exited with {agent.proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ip} not in Envoy's {CLUSTER} cluster after {timeout}s")
        await asyncio.sleep(0.005)  # finer polling would compete with the agent for CPU


async def measure(name: str, changes: int, workdir: Path) -> Result:
    """Start an agent on source `name` and time `changes` one-leaf changes."""
    ip = allocate_loopback_ip()
    admin = f"http://{ip}:{ADMIN_PORT}"
    peers = peer_ips(changes)
    tree = node_tree(ip, peers[0])
    data_dir = workdir / name
    data_dir.mkdir()
    cleanup = []
    try:
        if name == "file":
            path = data_dir / "metadata.yaml"
            path.write_text(yaml.safe_dump(tree))
            spec = str(path)

            async def write(peer: str) -> None:
                tree["hosts"]["model_serving"]["i-peer"]["ip"] = peer
                tmp = path.with_suffix(".tmp")
                tmp.write_text(yaml.safe_dump(tree))
                tmp.replace(path)
        elif name == "etcd":
            etcd_ip = next(a for a in iter(allocate_loopback_ip, None) if ports_free(a))
            etcd = EtcdProcess(data_dir / "etcd", etcd_ip)
            await etcd.start()
            cleanup.append(lambda: etcd.stop(signal.SIGKILL))
            await etcd.put_tree(ETCD_PREFIX, tree)
            spec = etcd.spec(ETCD_PREFIX)

            async def write(peer: str) -> None:
                await etcd.put(f"{ETCD_PREFIX}/hosts/model_serving/i-peer/ip", peer)
        elif name == "metad":
            cluster = copy.deepcopy(tree)
            del cluster["host"]  # metad maps /self/host from the caller (here: the address called)
            double = MetadDouble(cluster, host=ip)
            await double.start()
            cleanup.append(double.stop)
            spec = double.url

            async def write(peer: str) -> None:
                double.put("hosts/model_serving/i-peer/ip", peer)
        else:
            raise ValueError(f"unknown source {name!r}")

        agent = Node(data_dir, source=spec, ip=ip).start("--no-console", "--log-level", "warning")
        cleanup.append(agent.stop)
        async with aiohttp.ClientSession() as session:
            await wait_upstream(session, admin, peers[0], 120, agent)
            await asyncio.sleep(0.5)  # let start-up work settle
            seconds = []
            for peer in peers[1:]:
                t0 = time.monotonic()
                await write(peer)
                seen = await wait_upstream(session, admin, peer, 10, agent)
                seconds.append(seen - t0)
                await asyncio.sleep(0.05)
        return Result(name, seconds)
    finally:
        for step in reversed(cleanup):
            outcome = step()
            if asyncio.iscoroutine(outcome):
                await outcome


async def main_async(args: argparse.Namespace) -> int:
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="bench-propagation-") as tmp:
        for name in args.sources.split(","):
            results[name] = await measure(name, args.changes, Path(tmp))
            r = results[name]
            print(f"{name:6s} n={len(r.seconds)}  p50={r.p50 * 1000:7.1f} ms  p99={r.p99 * 1000:7.1f} ms  "
                  f"max={max(r.seconds) * 1000:7.1f} ms", flush=True)
    reference = results.get("file")
    if reference:
        for name, r in results.items():
            if name != "file":
                print(f"{name:6s} vs file: p50 x{r.p50 / reference.p50:.2f}  p99 x{r.p99 / reference.p99:.2f}")
    if args.assert_p99 is not None:
        slow = [n for n, r in results.items() if n in ("etcd", "metad") and r.p99 > args.assert_p99]
        if slow:
            print(f"FAIL: p99 above {args.assert_p99 * 1000:.0f} ms for {', '.join(slow)}")
            return 1
        print(f"OK: p99 within {args.assert_p99 * 1000:.0f} ms")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--sources", default="file,etcd,metad")
    parser.add_argument("--assert-p99", type=float, default=0.3, metavar="SECONDS")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())

"""The console on a multi-gigabyte log: latency of the last N lines and the server's memory.

The console runs in its own process (this file with --serve) on a fresh loopback
address at port 8090, over a log directory holding one generated access log of
--size-gib GiB. The benchmark then measures, against that process:

- the last --lines lines over HTTP (`/api/logs/tail/big.log?n=...`), --requests times;
  the reference, measured in the same run, is coreutils `tail -n N` on the same file
  (which also seeks from the end), and the ratio console / tail is printed;
- a filtered tail whose pattern is rare (it searches the console's scan budget);
- a streamed download of the whole file;
- a live follow receiving --follow-lines appended lines;

while sampling the console's resident memory every 20 ms. The acceptance bounds:
the last 1,000 lines in at most 50 ms and resident memory growing less than 10 MiB.

    python bench/console.py [--size-gib 2] [--lines 1000] [--requests 50] [--assert]

With --assert, exits 1 when a bound is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.addresses import allocate_loopback_ip  # noqa: E402
from tests.harness.console_process import ConsoleProcess, serve_console  # noqa: E402

PORT = 8090
MIB = 1024 * 1024


def serve(data_dir: Path, host: str) -> None:
    """The console alone, as the agent runs it (child process of the benchmark)."""
    from agent.console import ConsoleContext
    from agent.metrics import Metrics
    from agent.paths import Paths

    serve_console(ConsoleContext(
        paths=Paths(data_dir),
        status=lambda: {"node": {"instance_id": "i-bench", "ip": host, "role": "model_serving"}},
        metrics=Metrics(),
        envoy_admin_url="http://127.0.0.1:9",  # discard port: Envoy absent
        model_server_url=f"http://{host}:8501",
        password=lambda: "",
    ), host, PORT)


def write_log(path: Path, size: int) -> None:
    """An Envoy-style access log of `size` bytes (a repeated 1 MiB block, then unique lines)."""
    def line(i: int) -> bytes:
        return (f'[2024-05-01T12:{i // 60 % 60:02d}:{i % 60:02d}.123Z] "POST /v1/models/half_plus_two:predict HTTP/1.1" '
                f'200 - 23 25 3 2 "-" "python-requests/2.31" "{i:08x}-5d1c-4b7e-9f0a-1c2d3e4f5a6b" '
                f'"127.0.0.1:8080" upstream=127.0.0.{i % 3 + 1}:8501\n').encode()
    block = bytearray()
    i = 0
    while len(block) < MIB:
        block += line(i)
        i += 1
    tail = b"".join(line(10_000_000 + j) for j in range(20_000))
    with open(path, "wb") as f:
        written = 0
        while written + len(block) + len(tail) <= size:
            f.write(block)
            written += len(block)
        f.write(tail[: max(0, size - written)])
        f.write(b"\n")


class RssSampler:
    """Samples a process's resident memory in a thread."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def tail_reference(path: Path, lines: int, runs: int) -> list[float]:
    """coreutils tail -n on the same file, in seconds per run."""
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["tail", "-n", str(lines), str(path)], check=True, stdout=subprocess.DEVNULL)
        out.append(time.perf_counter() - started)
    return out


async def measure(base: str, log: Path, args: argparse.Namespace, sampler: RssSampler) -> dict:
    """Every measurement against the running console."""
    results: dict = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
        url = f"{base}/api/logs/tail/big.log"
        latencies, server_ms = [], []
        for _ in range(args.requests):
            started = time.perf_counter()
            async with http.get(url, params={"n": str(args.lines)}) as resp:
                view = json.loads(await resp.read())
            latencies.append(time.perf_counter() - started)
            server_ms.append(view["elapsed_ms"])
            assert len(view["lines"]) == args.lines, len(view["lines"])
        results["tail"] = latencies
        results["tail_server_ms"] = server_ms
        results["rss_after_tail"] = sampler.peak

        for key, params in (("filtered", {"q": "no-such-request-id"}), ("filtered_regex", {"q": r"upstream=10\.\d+", "regex": "1"})):
            started = time.perf_counter()
            async with http.get(url, params={"n": "100", **params}) as resp:
                view = json.loads(await resp.read())
            results[key] = (time.perf_counter() - started, view["scanned"])
        results["rss_after_filtered"] = sampler.peak

        started = time.perf_counter()
        received = 0
        async with http.get(f"{base}/logs/download/big.log") as resp:
            async for chunk in resp.content.iter_chunked(1 * MIB):
                received += len(chunk)
        results["download"] = (time.perf_counter() - started, received)
        results["rss_after_download"] = sampler.peak

        async with http.get(url, params={"n": "1"}) as resp:
            position = json.loads(await resp.read())["position"]
        async with http.get(f"{base}/logs/follow/big.log", params={"from": position}) as resp:
            started = time.perf_counter()
            with open(log, "ab") as f:
                for i in range(args.follow_lines):
                    f.write(f"appended line {i} {'x' * 150}\n".encode())
            got = 0
            while got < args.follow_lines:
                raw = await asyncio.wait_for(resp.content.readline(), 30)
                if raw.startswith(b"data: "):
                    got += len(json.loads(raw[6:]).get("lines", []))
            results["follow"] = (time.perf_counter() - started, got)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gib", type=float, default=2.0)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--follow-lines", type=int, default=20_000)
    parser.add_argument("--assert", dest="check", action="store_true")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.host)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-console-") as tmp:
        data_dir = Path(tmp)
        (data_dir / "logs").mkdir()
        (data_dir / "models").mkdir()
        log = data_dir / "logs" / "big.log"
        size = int(args.size_gib * 1024 * MIB)
        started = time.perf_counter()
        write_log(log, size)
        print(f"log: {log.stat().st_size / MIB:.0f} MiB written in {time.perf_counter() - started:.1f} s")

        host = allocate_loopback_ip()
        with ConsoleProcess([__file__, "--serve", str(data_dir), "--host", host]) as child:
            base = f"http://{host}:{PORT}"

            async def warm_up() -> None:
                # First requests import and allocate what every later request reuses.
                async with aiohttp.ClientSession() as http:
                    for path in ("/logs", "/api/logs/tail/big.log?n=10", "/logs/view/big.log?n=10"):
                        async with http.get(base + path) as resp:
                            await resp.read()

            asyncio.run(warm_up())
            sampler = RssSampler(child.pid)
            baseline = sampler.rss()
            with sampler:
                results = asyncio.run(measure(base, log, args, sampler))
            peak = sampler.peak
        reference = tail_reference(log, args.lines, args.requests)

    tail = results["tail"]
    med, p95, worst = statistics.median(tail), pct(tail, 0.95), max(tail)
    ref = statistics.median(reference)
    growth = (peak - baseline) / MIB
    print(f"last {args.lines} lines over HTTP ({args.requests} requests): median {med * 1000:.1f} ms, "
          f"p95 {p95 * 1000:.1f} ms, max {worst * 1000:.1f} ms (server-side median {statistics.median(results['tail_server_ms']):.1f} ms)")
    print(f"reference `tail -n {args.lines}` (process start included): median {ref * 1000:.1f} ms; ratio console/tail {med / ref:.2f}")
    for key, what in (("filtered", "substring"), ("filtered_regex", "regular expression")):
        secs, scanned = results[key]
        print(f"filtered tail, {what} found nowhere: {secs * 1000:.0f} ms to search {scanned / MIB:.0f} MiB (the scan budget)")
    secs, received = results["download"]
    print(f"streamed download: {received / MIB:.0f} MiB in {secs:.1f} s ({received / MIB / secs:.0f} MiB/s)")
    secs, got = results["follow"]
    print(f"live follow: {got} appended lines received in {secs:.2f} s")
    phases = ", ".join(f"{name} {(results['rss_after_' + key] - baseline) / MIB:.1f}"
                       for name, key in (("tails", "tail"), ("+filtered", "filtered"), ("+download", "download")))
    print(f"console RSS: baseline {baseline / MIB:.1f} MiB; peak growth (MiB) after {phases}, +follow {growth:.1f}")
    ok_latency = p95 <= 0.050
    ok_memory = growth < 10
    print(f"bound: last {args.lines} lines in <= 50 ms (p95): {'PASS' if ok_latency else 'FAIL'}; "
          f"RSS growth < 10 MiB: {'PASS' if ok_memory else 'FAIL'}")
    return 0 if (ok_latency and ok_memory) or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())

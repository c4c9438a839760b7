"""The console's chart pages with a full hour of samples: time to serve the Cluster and
Models pages and the chart data, against a static file of the same console in the same run.

The console runs in its own process (this file with --serve) on a fresh loopback address
at port 8090, its timeline filled with an hour of 1 s samples (3600 points) of --nodes
serving nodes, --models model versions and as many Envoy upstreams, plus 500 events. The
benchmark then requests, --requests times each:

- `/` (Cluster page) and `/models` (Models page): the HTML the browser loads first;
- `/api/timeline?since=<5 s ago>`: what each page asks every interval;
- `/api/timeline`: the whole hour, asked once when a page opens;
- `/static/console.css`: the reference (aiohttp's static file handler), and each time is
  printed as a ratio to it.

Times are measured by the client on loopback, so they include its own overhead: an upper
bound of the server time. Envoy is absent (its admin port refuses at once), so the Cluster
page's call to it costs a refused connection. Targets: each page and the interval's
update under 50 ms (median).

    python bench/console_charts.py [--requests 50] [--nodes 4] [--models 4]

Exits 1 naming any missed target.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.addresses import allocate_loopback_ip  # noqa: E402
from tests.harness.console_process import ConsoleProcess, serve_console  # noqa: E402

PORT = 8090
TARGET_MS = 50.0


def filled_timeline(nodes: int, models: int):
    """An hour of 1 s samples ending now, and a full event list."""
    from agent.console.timeline import MAX_EVENTS, Point, Rates, Timeline

    timeline = Timeline()
    timeline.interval = 1.0
    now = time.time()
    for i in range(3600):
        t = now - 3600 + i + 1
        r = Rates(rps=100.0 + i % 17, error_rate=0.001 * (i % 5), p50_ms=2.0 + (i % 7) / 10, p99_ms=20.0 + i % 11)
        timeline.add_point(Point(t, nodes={f"10.0.0.{k}": r for k in range(nodes)},
                                 models={f"model{k}/1": r for k in range(models)},
                                 upstreams={f"10.0.0.{k}": r for k in range(nodes)}))
    for j in range(MAX_EVENTS):
        timeline.add_event("applied", f"metadata v{j} applied", now - 3600 + j * 7)
    return timeline


def serve(data_dir: Path, host: str, nodes: int, models: int) -> None:
    """The console alone with a filled timeline (child process of the benchmark)."""
    from agent.console import ConsoleContext
    from agent.metrics import Metrics
    from agent.paths import Paths

    paths = Paths(data_dir)
    paths.ensure()
    serving = [{"instance_id": f"i-{k}", "ip": f"10.0.0.{k}", "role": "model_serving", "sid": k} for k in range(nodes)]
    serve_console(ConsoleContext(
        paths=paths,
        status=lambda: {"node": {"instance_id": "i-bench", "ip": host, "role": "model_serving"},
                        "serving_nodes": serving, "params": {"model.name": "model0"}},
        metrics=Metrics(),
        envoy_admin_url="http://127.0.0.1:9",  # discard port: Envoy absent
        model_server_url="http://127.0.0.1:9",
        password=lambda: "",
        timeline=filled_timeline(nodes, models),
    ), host, PORT)


async def timed(http: aiohttp.ClientSession, url: str, requests: int) -> tuple[list[float], int]:
    """Milliseconds per GET of `url`, and the body size."""
    out, size = [], 0
    for _ in range(requests):
        started = time.perf_counter()
        async with http.get(url) as resp:
            body = await resp.read()
            assert resp.status == 200, (url, resp.status)
        out.append((time.perf_counter() - started) * 1000)
        size = len(body)
    return out, size


async def measure(base: str, requests: int) -> dict[str, tuple[list[float], int]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        await timed(http, f"{base}/static/console.css", 5)  # warm up connections and caches
        since = time.time() - 5
        return {
            "reference /static/console.css": await timed(http, f"{base}/static/console.css", requests),
            "/ (Cluster page)": await timed(http, f"{base}/", requests),
            "/models (Models page)": await timed(http, f"{base}/models", requests),
            "/api/timeline?since=-5s (each interval)": await timed(http, f"{base}/api/timeline?since={since}", requests),
            "/api/timeline (the whole hour, on open)": await timed(http, f"{base}/api/timeline", max(5, requests // 5)),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--host", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.host, args.nodes, args.models)
        return 0
    host = allocate_loopback_ip()
    with tempfile.TemporaryDirectory(prefix="bench-charts-") as tmp:
        with ConsoleProcess([__file__, "--serve", tmp, "--host", host, "--nodes", str(args.nodes),
                             "--models", str(args.models)]):
            results = asyncio.run(measure(f"http://{host}:{PORT}", args.requests))
    reference = statistics.median(results["reference /static/console.css"][0])
    print(f"{'request':44} {'median ms':>10} {'p95 ms':>8} {'x static':>9} {'bytes':>10}")
    missed = []
    for name, (ms, size) in results.items():
        median = statistics.median(ms)
        p95 = sorted(ms)[max(0, round(0.95 * len(ms)) - 1)]
        print(f"{name:44} {median:10.2f} {p95:8.2f} {median / reference:9.1f} {size:10}")
        if name.startswith(("/ ", "/models", "/api/timeline?since")) and median > TARGET_MS:
            missed.append(f"{name}: median {median:.1f} ms > {TARGET_MS:.0f} ms")
    for m in missed:
        print(f"MISSED {m}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

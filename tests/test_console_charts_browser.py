"""The console's live charts in a real browser (Debian's Chromium through Playwright), on a
three-node cluster under load: a model switch and a scale-out later, the page itself
shows traffic on every serving node and on both models, and a marker for each event.
Screenshots: tests/artifacts/charts-cluster.png and charts-models.png."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from playwright.async_api import Page, async_playwright

from agent.commands.up import cluster_trees
from tests.harness.load import Load
from tests.harness.node import http, wait_for
from tests.test_cluster import Cluster, start_nodes
from tests.test_console_browser import ARTIFACTS, BROWSER_ARGS, CHROMIUM

pytestmark = pytest.mark.slow

ENV = {"web.charts.interval": "1"}


async def attribute_words(page: Page, selector: str, name: str) -> set[str]:
    value = await page.get_attribute(selector, name)
    return set((value or "").split())


async def wait_page(page: Page, check, timeout: float, what: str):
    """Poll the page until `check()` returns something truthy (it re-renders every second)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: last saw {last!r}")


async def marker_kinds(page: Page, chart: str) -> dict[str, int]:
    kinds = await page.locator(f"#{chart} .marker").evaluate_all("ms => ms.map(m => m.dataset.kind)")
    out: dict[str, int] = {}
    for kind in kinds:
        out[kind] = out.get(kind, 0) + 1
    return out


async def test_charts_show_traffic_on_every_node_and_a_marker_per_event(ip_factory, tmp_path):
    ips = [ip_factory() for _ in range(3)]
    nodes = start_nodes(ips, tmp_path, **ENV)
    cluster = Cluster(nodes)
    try:
        wait_for(lambda: cluster.healthy_upstreams() == set(ips), 30, 0.2, "all nodes healthy")
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
            try:
                await run_scenario(browser, cluster, ips, ip_factory, tmp_path)
            finally:
                await browser.close()
    finally:
        for n in cluster.nodes:
            n.stop()


async def run_scenario(browser, cluster: Cluster, ips: list[str], ip_factory, tmp_path) -> None:
    entry = cluster.entry
    page = await browser.new_page(viewport={"width": 1400, "height": 1000})
    blocked: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(f"http://{entry.ip}:8090/") else blocked.append(r.url))
    # The browser's own favicon request is no page resource; any other failed load or script error is.
    page.on("response", lambda r: blocked.append(f"HTTP {r.status} {r.url}")
            if r.status >= 400 and not r.url.endswith("/favicon.ico") else None)
    page.on("pageerror", lambda e: blocked.append(f"script error: {e}"))
    await page.goto(f"http://{entry.ip}:8090/")

    async with Load(entry.ip, concurrency=3) as load:
        await load.wait_requests(100)
        # Traffic on every node, from the model servers' counts and Envoy's view alike.
        await wait_page(page, lambda: _has(page, "#chart-nodes-rps", set(ips)), 30, "traffic on the three nodes")
        await wait_page(page, lambda: _has(page, "#chart-upstreams-rps", set(ips)), 30, "Envoy's view of the three")

        # A model switch: half_plus_three (a copy) everywhere, then model.name.
        for n in cluster.nodes:
            shutil.copytree(n.data_dir / "models" / "half_plus_two", n.data_dir / "models" / "half_plus_three")
        cluster.update_all(lambda t: t["env"].update({"model.name": "half_plus_three"}))
        await asyncio.to_thread(wait_for, lambda: b"AVAILABLE" in http(
            "GET", f"http://{entry.ip}:8080/v1/models/half_plus_three")[1], 60, 0.2, "new model available")
        load.model = "half_plus_three"
        await load.wait_requests(100)

        # A scale-out: a fourth node, serving the new model.
        new_ip = ip_factory()
        all_ips = ips + [new_ip]
        trees = cluster_trees(all_ips, **ENV, **{"model.name": "half_plus_three"})
        await cluster.scale_out(trees, tmp_path / "node4", lambda models: shutil.copytree(
            models / "half_plus_two", models / "half_plus_three"))
        for n, tree in zip(cluster.nodes, trees):
            n.update(tree)
        await load.wait_requests(150)

        # The page shows it all: traffic on every node (the fourth included) and both models.
        await wait_page(page, lambda: _has(page, "#chart-nodes-rps", set(all_ips)), 60, "traffic on four nodes")
        await wait_page(page, lambda: _has(page, "#chart-upstreams-rps", set(all_ips)), 60, "Envoy's view of four")
        kinds = await wait_page(page, lambda: _markers(page, "chart-nodes-rps", {"switched", "node_added", "loaded", "applied"}),
                                30, "markers for the switch, the new node, the loads")
        assert load.result.failed == 0, load.result
    # Every chart of the page carries the same markers; the list below names each event.
    for chart in ("chart-nodes-latency", "chart-nodes-err", "chart-upstreams-rps", "chart-upstreams-err"):
        assert set(await marker_kinds(page, chart)) >= {"switched", "node_added"}, chart
    listed = await page.locator("#chart-events li").evaluate_all("ls => ls.map(l => [l.dataset.kind, l.textContent])")
    texts = " | ".join(text for _, text in listed)
    applied = [text for kind, text in listed if kind == "applied"]
    assert len(applied) == len(set(applied)), applied  # one marker per metadata version
    assert "model.name half_plus_two → half_plus_three" in texts, texts
    assert f"serving node {new_ip} added" in texts and f"half_plus_three/1 loaded on {new_ip}" in texts, texts
    assert kinds["switched"] == 1 and kinds["node_added"] == 1, kinds
    # Reloaded, the page draws the whole window again, with the server-rendered tables current.
    await page.reload()
    await wait_page(page, lambda: _has(page, "#chart-nodes-rps", set(all_ips)), 30, "the charts redrawn")
    assert set(await marker_kinds(page, "chart-nodes-rps")) == set(kinds)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "charts-cluster.png"), full_page=True)

    await page.goto(f"http://{entry.ip}:8090/models")
    await wait_page(page, lambda: _has(page, "#chart-models-rps", {"half_plus_two/1", "half_plus_three/1"}), 30,
                    "traffic on both models")
    assert set(await marker_kinds(page, "chart-models-rps")) >= {"switched", "node_added", "loaded"}
    await page.screenshot(path=str(ARTIFACTS / "charts-models.png"), full_page=True)
    # Nothing but the node itself was asked for, and no script error (the strict CSP holds).
    assert blocked == [], blocked


async def _has(page: Page, selector: str, wanted: set[str]):
    words = await attribute_words(page, selector, "data-traffic")
    return words if wanted <= words else None


async def _markers(page: Page, chart: str, wanted: set[str]):
    kinds = await marker_kinds(page, chart)
    return kinds if wanted <= set(kinds) else None

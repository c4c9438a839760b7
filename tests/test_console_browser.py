"""The console in a real browser: Debian's Chromium driven by Playwright (no browser
download). Screenshots are saved under tests/artifacts/."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from agent import PROJECT_ROOT
from agent.console import start_console
from agent.metrics import Metrics
from agent.paths import Paths
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node
from tests.test_console import CONSOLE_PORT, agent_status, make_context

CHROMIUM = "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ARTIFACTS = PROJECT_ROOT / "tests" / "artifacts"


@pytest.fixture
async def browser():
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def screenshot(page: Page, name: str) -> None:
    """Save a full-page screenshot as a test artifact."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"console-{name}.png"), full_page=True)


def access_line(i: int, ip: str) -> str:
    """An Envoy access-log line naming the serving node that answered."""
    status = 503 if i % 4 == 0 else 200
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    return f'[{ts}] "POST /v1/models/half_plus_two:predict HTTP/1.1" status={status} upstream={ip}:8501 request={i}\n'


async def append_requests(path: Path, ip: str, counter: list[int], stop: asyncio.Event) -> None:
    """Write an access-log line every 100 ms, as Envoy does under light traffic."""
    while not stop.is_set():
        counter[0] += 1
        with open(path, "a") as f:
            f.write(access_line(counter[0], ip))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


def request_no(i: int) -> re.Pattern:
    """Matches the access-log line of request `i` exactly."""
    return re.compile(rf"request={i}$")


async def line_texts(page: Page) -> list[str]:
    return await page.locator("#log .line:not(.notice)").all_inner_texts()


async def test_live_log_view_filter_rotation_and_password(browser: Browser, node_ip: str, data_dir: Path):
    paths = Paths(data_dir)
    paths.ensure()
    envoy_log = paths.logs / "envoy.log"
    envoy_log.write_text("".join(access_line(i, node_ip) for i in range(-200, 0)))
    (paths.logs / "app.log").write_text("model server started\n")
    (paths.logs / "cmd.log").write_text("2024-01-01 00:00:00 1 [executing]: /opt/app/bin/start\n")
    password = ["s3cret-console"]
    runner = await start_console(make_context(paths, node_ip, agent_status(node_ip), Metrics(), password), node_ip, CONSOLE_PORT)
    base = f"http://{node_ip}:{CONSOLE_PORT}"
    stop = asyncio.Event()
    counter = [0]
    writer = asyncio.create_task(append_requests(envoy_log, node_ip, counter, stop))
    try:
        # Without the password nothing is served.
        anonymous = await browser.new_context()
        for path in ("/logs", "/logs/view/envoy.log", "/logs/follow/envoy.log", "/static/console.js"):
            assert (await anonymous.request.get(base + path)).status == 401
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            await (await anonymous.new_page()).goto(f"{base}/logs")
        await anonymous.close()

        context = await browser.new_context(http_credentials={"username": "admin", "password": password[0]},
                                            viewport={"width": 1280, "height": 800})
        page = await context.new_page()
        response = await page.goto(f"{base}/logs")
        assert response.status == 200
        for name in ("envoy.log", "app.log", "cmd.log"):
            await expect(page.locator("a.log-link", has_text=name)).to_be_visible()
        await screenshot(page, "logs")

        await page.locator("a.log-link", has_text="envoy.log").click()
        await expect(page.locator("#log-name")).to_have_text("envoy.log")
        await expect(page.locator("#live-state")).to_have_text("live")
        seen = counter[0]
        # New access-log lines appear without reloading the page.
        await expect(page.locator("#log .line.new", has_text=request_no(seen + 5))).to_have_count(1, timeout=10_000)
        texts = await line_texts(page)
        numbers = [int(t.rsplit("request=", 1)[1]) for t in texts]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), "lines lost, repeated or reordered"
        await screenshot(page, "envoy-live")

        # Rotation: the view carries on with the new file.
        envoy_log.rename(paths.logs / "envoy.log.1")
        await expect(page.locator("#log .line.notice", has_text="rotated")).to_have_count(1, timeout=10_000)
        after = counter[0]
        await expect(page.locator("#log .line.new", has_text=request_no(after + 3))).to_have_count(1, timeout=10_000)

        # Filter: only 503s, in the history and live.
        await page.fill("#filter", "status=503")
        await page.click("#apply")
        await expect(page.locator("#live-state")).to_have_text("live")
        start = counter[0]
        await expect(page.locator("#log .line.new")).not_to_have_count(0, timeout=10_000)
        await page.wait_for_function("() => document.querySelectorAll('#log .line.new').length >= 2", timeout=10_000)
        texts = await line_texts(page)
        assert texts and all("status=503" in t for t in texts), texts
        # Between two 503s shown live, the file held 200s (every request number not a
        # multiple of 4): the filter left them out. (Counted from the lines themselves:
        # the follower may still be delivering lines written before the filter was set.)
        live = [int(t.rsplit("request=", 1)[1]) for t in await page.locator("#log .line.new:not(.notice)").all_inner_texts()]
        assert len(live) >= 2 and all(n % 4 == 0 for n in live) and live[-1] - live[0] >= 4, live
        await screenshot(page, "envoy-filtered")

        # Pause stops the stream; resume delivers what was written meanwhile.
        await page.click("#live-toggle")
        await expect(page.locator("#live-state")).to_have_text("paused")
        paused_count = len(await line_texts(page))
        written = counter[0]
        while counter[0] < written + 6:  # lines keep being written while paused
            await asyncio.sleep(0.05)
        assert len(await line_texts(page)) == paused_count
        await page.click("#live-toggle")
        await page.wait_for_function(f"() => document.querySelectorAll('#log .line:not(.notice)').length > {paused_count + 1}",
                                     timeout=10_000)
        await context.close()
    finally:
        stop.set()
        await writer
        await runner.cleanup()


async def send_predictions(ip: str, agents: list[str]) -> None:
    """POST one prediction through Envoy (http.port 8080) per user agent."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for ua in agents:
            async with http.post(f"http://{ip}:8080/v1/models/half_plus_two:predict", json={"instances": [1.0, 2.0]},
                                 headers={"User-Agent": ua}) as resp:
                assert resp.status == 200, await resp.text()
                assert await resp.json() == {"predictions": [2.5, 3.0]}


async def test_whole_node_requests_through_envoy_appear_live_and_models_are_available(browser: Browser, node_ip: str, data_dir: Path):
    node = Node(data_dir, single_node_tree(node_ip, **{"enable.access.log": "true"}))
    await asyncio.to_thread(node.install_models)
    node.start()
    try:
        await asyncio.to_thread(node.wait_serving)
        base = f"http://{node_ip}:{CONSOLE_PORT}"
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        page = await context.new_page()

        await page.goto(f"{base}/logs")
        for name in ("envoy.log", "envoy_error.log", "tensorflow_serving.log"):
            await expect(page.locator("a.log-link", has_text=re.compile(rf"^{re.escape(name)}$"))).to_be_visible()
        await screenshot(page, "node-logs")

        await page.locator("a.log-link", has_text=re.compile(r"^envoy\.log$")).click()
        await expect(page.locator("#live-state")).to_have_text("live")
        agents = [f"console-e2e-{i}" for i in range(1, 6)]
        await send_predictions(node_ip, agents)
        for ua in agents:
            line = page.locator("#log .line.new", has_text=f'"{ua}"')
            await expect(line).to_have_count(1, timeout=15_000)
            # The access log names the serving node that answered.
            await expect(line).to_contain_text(f"upstream={node_ip}:8501")
            await expect(line).to_contain_text('"POST /v1/models/half_plus_two:predict HTTP/1.1" 200')
        await screenshot(page, "node-envoy-live")

        await page.fill("#filter", "console-e2e-3")
        await page.click("#apply")
        await expect(page.locator("#live-state")).to_have_text("live")
        await expect(page.locator("#log .line")).to_have_count(1)
        await send_predictions(node_ip, ["console-e2e-9", "console-e2e-3-again"])
        await expect(page.locator("#log .line.new", has_text="console-e2e-3-again")).to_have_count(1, timeout=15_000)
        # console-e2e-9 was logged before console-e2e-3-again: the follower has passed it.
        texts = await line_texts(page)
        assert all("console-e2e-3" in t for t in texts) and len(texts) == 2, texts
        await screenshot(page, "node-envoy-filtered")

        await page.click("nav >> text=Models")
        version = page.locator('#model-half_plus_two tr.version[data-version="1"]')
        await expect(version).to_have_attribute("data-state", "AVAILABLE")
        await expect(version.locator(".serving")).to_have_text("serving")
        await screenshot(page, "node-models")

        await page.click("nav >> text=Cluster")
        node_row = page.locator(f'tr.serving-node[data-ip="{node_ip}"]')
        deadline = time.monotonic() + 20
        while await node_row.get_attribute("data-health") != "healthy":  # Envoy health-checks every second
            assert time.monotonic() < deadline, await node_row.inner_text()
            await asyncio.sleep(0.5)
            await page.reload()
        await screenshot(page, "node-cluster")
        await context.close()
    finally:
        await asyncio.to_thread(node.stop)

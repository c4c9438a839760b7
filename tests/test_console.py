"""The web console served on a node's loopback address at port 8090: logs, models,
cluster state, metrics, password and security headers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.console import ConsoleContext, start_console
from agent.console.app import THROTTLE
from agent.console.tail import MAX_LINE_BYTES, TRUNCATED_MARK, BadFilter, make_matcher, tail_file
from agent.metrics import Metrics
from agent.paths import Paths
from tests.harness.node import wait_for
from tests.harness.serving_support import Server, copy_builtin, write_config

CONSOLE_PORT = 8090


def agent_status(ip: str, **extra: Any) -> dict[str, Any]:
    """An AgentStatus.to_dict() as a serving node reports it."""
    me = {"instance_id": "i-test01", "ip": ip, "role": "model_serving", "sid": 1}
    status = {
        "node": me,
        "source": "file:/tmp/metadata.yaml",
        "source_stale_since": None,
        "applied_version": "7",
        "applied_at": time.time() - 30,
        "received_version": "7",
        "received_at": time.time() - 30,
        "last_rejection": None,
        "params": {"model.name": "half_plus_two", "http.port": 8080, "web.password": "***", "s3.secret.key": "***"},
        "serving_nodes": [me],
        "repo_node": None,
        "processes": {"envoy": {"state": "running", "pid": 100}},
        "model_sync": {"state": "idle", "last_sync_at": time.time() - 60},
        "up_to_date": True,
    }
    status.update(extra)
    return status


@dataclass
class Console:
    """A running console and the knobs a test turns."""

    base: str
    ip: str
    paths: Paths
    status: dict[str, Any]
    metrics: Metrics
    password: list[str] = field(default_factory=lambda: [""])
    runner: Any = None


def make_context(paths: Paths, ip: str, status: dict, metrics: Metrics, password: list[str], admin_url: str | None = None) -> ConsoleContext:
    """A ConsoleContext as the daemon builds it, around test-owned values."""
    return ConsoleContext(
        paths=paths,
        status=lambda: status,
        metrics=metrics,
        envoy_admin_url=admin_url or f"http://{ip}:8001",
        model_server_url=f"http://{ip}:8501",
        password=lambda: password[0],
    )


@pytest.fixture
async def console(node_ip: str, data_dir: Path):
    paths = Paths(data_dir)
    paths.ensure()
    c = Console(base=f"http://{node_ip}:{CONSOLE_PORT}", ip=node_ip, paths=paths, status=agent_status(node_ip), metrics=Metrics())
    runner = c.runner = await start_console(make_context(paths, node_ip, c.status, c.metrics, c.password), node_ip, CONSOLE_PORT)
    try:
        yield c
    finally:
        await runner.cleanup()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


def basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP Basic."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def get(http: aiohttp.ClientSession, url: str, **kw) -> tuple[int, str, Any]:
    async with http.get(url, **kw) as resp:
        return resp.status, await resp.text(), resp.headers


# ---------------------------------------------------------------- tail (unit)


def test_tail_matches_a_naive_reading_for_random_files(tmp_path: Path):
    rng = random.Random(1234)
    path = tmp_path / "random.log"
    for trial in range(120):
        lines = [f"{i}-" + "x" * rng.choice([0, 3, 40, 200, 5000, 70000 if rng.random() < 0.02 else 10]) for i in range(rng.randint(0, 1500))]
        text = "\n".join(lines) + ("\n" if lines and rng.random() < 0.8 else "")
        path.write_text(text)
        n = rng.randint(1, 400)
        query = rng.choice(["", "7", "12-", "zz"])
        regex = rng.random() < 0.5
        expected = [ln for ln in (text[:-1] if text.endswith("\n") else text).split("\n") if text and query in ln][-n:]
        expected = [ln if len(ln) <= MAX_LINE_BYTES else ln[:MAX_LINE_BYTES] + TRUNCATED_MARK for ln in expected]
        result = tail_file(path, n, make_matcher(query, regex))
        assert result.lines == expected, f"trial {trial}"
        assert result.end == len(text.encode())


def test_regex_filters_anchor_per_line_and_run_in_linear_time(tmp_path: Path):
    path = tmp_path / "app.log"
    evil_line = "a" * 4000 + "!"
    path.write_text("begin\nbanana\nabba\n" + f"{evil_line}\n" * 2000 + "end b\n")
    assert tail_file(path, 10, make_matcher(r"^b", True)).lines == ["begin", "banana"]
    assert tail_file(path, 10, make_matcher(r"b$", True)).lines == ["end b"]
    started = time.perf_counter()
    expected = {r"(a+)+$": ["banana", "abba"], r".*.*.*x": [], r"(a|aa)*b": ["begin", "banana", "abba", "end b"], r"(.*a){20}z": []}
    for pattern, lines in expected.items():
        assert tail_file(path, 10, make_matcher(pattern, True)).lines == lines, pattern
    assert time.perf_counter() - started < 5  # Python's re would take hours on these lines
    for bad in (r"(a)\1", r"(?<=x)y", "(", "a{2,1}"):
        with pytest.raises(BadFilter):
            make_matcher(bad, True)


def test_tail_of_one_huge_line_is_cut_and_bounded(tmp_path: Path):
    path = tmp_path / "one-line.log"
    with open(path, "wb") as f:
        f.write(b"first\n" + b"y" * (20 * 1024 * 1024))
    started = time.perf_counter()
    result = tail_file(path, 2, None)
    assert [len(x) for x in result.lines] == [5, MAX_LINE_BYTES + len(TRUNCATED_MARK)]
    assert result.lines[1].endswith(TRUNCATED_MARK)
    assert time.perf_counter() - started < 5


def test_tail_answers_are_bounded_in_bytes(tmp_path: Path):
    path = tmp_path / "wide.log"
    path.write_text(("z" * 3000 + "\n") * 4000)
    result = tail_file(path, 10_000, None, max_bytes=1024 * 1024)
    assert result.size_limited and len(result.lines) == (1024 * 1024) // 3000


def test_filtered_tail_stops_at_its_scan_budget(tmp_path: Path):
    path = tmp_path / "big.log"
    with open(path, "wb") as f:
        f.write(b"needle at the start\n")
        f.write(b"hay hay hay hay\n" * 200_000)  # 3.2 MB
    result = tail_file(path, 10, make_matcher("needle", False), scan_limit=1024 * 1024)
    assert result.lines == [] and result.scan_limited
    result = tail_file(path, 10, make_matcher("needle", False))
    assert result.lines == ["needle at the start"] and not result.scan_limited


# ---------------------------------------------------------------- logs


async def test_log_list_shows_every_file_with_size_and_time(console: Console, http):
    logs = console.paths.logs
    (logs / "envoy.log").write_text("a\nb\n")
    (logs / "envoy_error.log").write_text("")
    (logs / "cmd.log").write_text("2024-01-01 00:00:00 1 [executing]: start\n")
    (logs / "archive").mkdir()
    (logs / "archive" / "app.log.1").write_text("old\n")
    status, body, headers = await get(http, f"{console.base}/logs")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name in ("envoy.log", "envoy_error.log", "cmd.log", "archive/app.log.1"):
        assert f'href="/logs/view/{name}"' in body
    status, body, _ = await get(http, f"{console.base}/api/logs")
    files = {f["path"]: f for f in json.loads(body)["files"]}
    assert files["envoy.log"]["size"] == 4 and files["envoy.log"]["mtime"] > time.time() - 60


async def test_last_lines_with_substring_and_regex_filters(console: Console, http):
    lines = [f'[2024-01-01T00:00:{i % 60:02d}] "POST /v1/models/half_plus_two:predict" {200 if i % 10 else 503} upstream=127.0.0.{i % 3 + 1}' for i in range(3000)]
    (console.paths.logs / "envoy.log").write_text("\n".join(lines) + "\n")
    _, body, _ = await get(http, f"{console.base}/api/logs/tail/envoy.log?n=5")
    view = json.loads(body)
    assert view["lines"] == lines[-5:]
    assert view["position"].endswith(f":{len(chr(10).join(lines)) + 1}")

    _, body, _ = await get(http, f"{console.base}/api/logs/tail/envoy.log", params={"n": "1000", "q": "} 503"})
    assert json.loads(body)["lines"] == []
    _, body, _ = await get(http, f"{console.base}/api/logs/tail/envoy.log", params={"n": "1000", "q": "\" 503"})
    assert json.loads(body)["lines"] == [ln for ln in lines if '" 503' in ln][-1000:]
    _, body, _ = await get(http, f"{console.base}/api/logs/tail/envoy.log", params={"n": "50", "q": r"503 upstream=127\.0\.0\.[23]$", "regex": "1"})
    got = json.loads(body)["lines"]
    assert got and len(got) == 50 and all(" 503 " in ln and not ln.endswith(".1") for ln in got)

    status, body, _ = await get(http, f"{console.base}/logs/view/envoy.log", params={"q": "(", "regex": "1"})
    assert status == 400 and "invalid regular expression" in body
    status, body, _ = await get(http, f"{console.base}/logs/view/envoy.log", params={"n": "3", "q": "upstream=127.0.0.2"})
    assert status == 200 and body.count('<div class="line">') == 3 and lines[-2].replace('"', "&#34;") in body


async def read_events(resp: aiohttp.ClientResponse, want_lines: int, timeout: float = 10.0) -> tuple[list[str], list[str], str]:
    """Read Server-Sent Events until `want_lines` lines arrived: (lines, notices, last id)."""
    lines: list[str] = []
    notices: list[str] = []
    last_id = ""
    event: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while len(lines) < want_lines:
        raw = await asyncio.wait_for(resp.content.readline(), max(0.1, deadline - time.monotonic()))
        line = raw.decode().rstrip("\n")
        if line.startswith(":") or line.startswith("retry:"):
            continue
        if line:
            key, _, value = line.partition(": ")
            event[key] = value
            continue
        if "data" in event:
            data = json.loads(event["data"])
            last_id = event.get("id", last_id)
            if event.get("event") == "notice":
                notices.append(data["notice"])
            else:
                lines.extend(data["lines"])
        event = {}
    return lines, notices, last_id


async def test_follow_streams_new_lines_across_rotation_and_truncation(console: Console, http):
    log_path = console.paths.logs / "envoy.log"
    log_path.write_text("old line\n")
    _, body, _ = await get(http, f"{console.base}/api/logs/tail/envoy.log")
    position = json.loads(body)["position"]
    async with http.get(f"{console.base}/logs/follow/envoy.log", params={"from": position}) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        with open(log_path, "a") as f:
            f.write("request 1\nrequest 2\n")
        lines, _, _ = await read_events(resp, 2)
        assert lines == ["request 1", "request 2"]

        # logrotate's default: rename, then the writer reopens a new file.
        with open(log_path, "a") as f:
            f.write("last before rotation\n")
        os.rename(log_path, console.paths.logs / "envoy.log.1")
        log_path.write_text("first after rotation\n")
        lines, notices, _ = await read_events(resp, 2)
        assert lines == ["last before rotation", "first after rotation"] and notices == ["rotated"]

        # copytruncate: same file, emptied, then written again (shorter than what was
        # read, so the follower sees the truncation whenever it looks).
        with open(log_path, "r+") as f:
            f.truncate(0)
        with open(log_path, "a") as f:
            f.write("after truncation\n")
        lines, notices, _ = await read_events(resp, 1)
        assert lines == ["after truncation"] and notices == ["truncated"]


async def test_follow_applies_the_filter_and_resumes_from_last_event_id(console: Console, http):
    log_path = console.paths.logs / "app.log"
    log_path.write_text("")
    _, body, _ = await get(http, f"{console.base}/api/logs/tail/app.log")
    position = json.loads(body)["position"]
    async with http.get(f"{console.base}/logs/follow/app.log", params={"from": position, "q": "ERROR"}) as resp:
        with open(log_path, "a") as f:
            f.write("INFO ok\nERROR one\nINFO ok\nERROR two\n")
        lines, _, last_id = await read_events(resp, 2)
    assert lines == ["ERROR one", "ERROR two"]
    with open(log_path, "a") as f:
        f.write("ERROR while disconnected\n")
    # What an EventSource does when it reconnects.
    async with http.get(f"{console.base}/logs/follow/app.log", params={"q": "ERROR"}, headers={"Last-Event-ID": last_id}) as resp:
        lines, _, _ = await read_events(resp, 1)
    assert lines == ["ERROR while disconnected"]


async def test_download_streams_the_whole_file_never_a_sibling(console: Console, http):
    data = os.urandom(3 * 1024 * 1024 + 17)
    (console.paths.logs / "app.log").write_bytes(data)
    (console.paths.logs / "app.log.gz").write_bytes(b"an older rotated file")
    async with http.get(f"{console.base}/logs/download/app.log", headers={"Accept-Encoding": "gzip, br"}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == 'attachment; filename="app.log"'
        assert resp.headers["Content-Type"] == "application/octet-stream"
        assert "Content-Encoding" not in resp.headers
        assert await resp.read() == data


async def test_shutdown_ends_open_live_streams(node_ip: str, data_dir: Path):
    paths = Paths(data_dir)
    paths.ensure()
    (paths.logs / "envoy.log").write_text("x\n")
    runner = await start_console(make_context(paths, node_ip, agent_status(node_ip), Metrics(), [""]), node_ip, CONSOLE_PORT)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{node_ip}:{CONSOLE_PORT}/logs/follow/envoy.log") as resp:
            await resp.content.readline()
            started = time.monotonic()
            await runner.cleanup()
            assert time.monotonic() - started < 3


# ---------------------------------------------------------------- models


def real_model_server(console: "Console", models: list[str]) -> Server:
    """The real built-in model server on the console's address, serving `models` from
    the node's model directory (not started)."""
    config = console.paths.serving_conf / "models.config"
    write_config(config, [{"name": m, "base_path": console.paths.models / m} for m in models])
    return Server(config, ip=console.ip)


def _sizes(version: Path) -> tuple[int, int]:
    files = [p for p in version.rglob("*") if p.is_file()]  # regular files: a FIFO holds no bytes
    return sum(p.lstat().st_size for p in files), len(files)


async def test_models_by_version_with_state_size_and_serving_version(console: Console, http):
    """Every state the console shows, produced by the real model server: AVAILABLE; a
    version LOADING for as long as the test wants (its model file is a FIFO, so the
    server's load blocks reading it until the test closes it); and END with the error of
    a corrupt file."""
    models = console.paths.models
    copy_builtin(models, "half_plus_two")
    (models / "resnet" / "3").mkdir(parents=True)
    (models / "resnet" / "3" / "model.onnx").write_bytes(b"\x08\x07garbage, not a model")
    (models / ".staging-half_plus_two-3").mkdir()  # a sync in progress is not a model
    server = await asyncio.to_thread(real_model_server(console, ["half_plus_two", "resnet"]).start)
    fifo = models / "half_plus_two" / "2" / "model.onnx"
    try:
        await asyncio.to_thread(server.wait_available, "half_plus_two", 1)
        fifo.parent.mkdir()
        os.mkfifo(fifo)
        await asyncio.to_thread(wait_for, lambda: server.states("half_plus_two") == {2: "LOADING", 1: "AVAILABLE"}
                                and server.states("resnet") == {3: "END"}, 30, 0.05, "version 2 loading, resnet failed")
        _, body, _ = await get(http, f"{console.base}/api/models")
        by_name = {m["name"]: m for m in json.loads(body)["models"]}
        status, page, _ = await get(http, f"{console.base}/models")
    finally:
        if fifo.exists():  # end the blocked load (it fails: an empty file), then stop
            def unblocked() -> bool:
                # Every reader gets an empty file: OpenVINO's, then ONNX Runtime's fallback.
                try:
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
                except OSError:
                    pass  # no reader at this moment
                return server.states("half_plus_two").get(2) != "LOADING"

            await asyncio.to_thread(wait_for, unblocked, 30, 0.05, "the blocked load to end")
        assert await asyncio.to_thread(server.stop) == 0
    assert set(by_name) == {"half_plus_two", "resnet"}
    hpt = by_name["half_plus_two"]
    assert hpt["configured"] and hpt["server"]["loaded"]
    assert [(v["version"], v["state"], v["serving"], v["size"], v["files"]) for v in hpt["versions"]] == [
        ("2", "LOADING", False, *_sizes(models / "half_plus_two" / "2")),
        ("1", "AVAILABLE", True, *_sizes(models / "half_plus_two" / "1")),
    ]
    error = by_name["resnet"]["versions"][0]["error"]
    assert error.startswith("UNKNOWN: ") and "not a valid ONNX model" in error, error
    assert status == 200
    assert 'data-version="1" data-state="AVAILABLE"' in page and 'data-version="2" data-state="LOADING"' in page
    assert page.index('id="model-half_plus_two"') < page.index('id="model-resnet"')


async def test_model_files_can_be_browsed_and_downloaded(console: Console, http):
    version = console.paths.models / "half_plus_two" / "1"
    (version / "variables").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"graph")
    status, body, _ = await get(http, f"{console.base}/models/files/half_plus_two/1")
    assert status == 200
    assert 'href="/models/files/half_plus_two/1/variables"' in body
    assert 'href="/models/download/half_plus_two/1/saved_model.pb"' in body
    async with http.get(f"{console.base}/models/download/half_plus_two/1/saved_model.pb") as resp:
        assert resp.status == 200 and await resp.read() == b"graph"


async def test_a_down_model_server_and_envoy_show_as_such(console: Console, http):
    (console.paths.models / "half_plus_two" / "1").mkdir(parents=True)
    started = time.monotonic()
    status, body, _ = await get(http, f"{console.base}/models")
    assert status == 200 and "model server unreachable" in body
    status, body, _ = await get(http, f"{console.base}/")
    assert status == 200 and "Envoy admin unreachable" in body
    assert time.monotonic() - started < 6


async def test_pages_render_when_the_agent_status_is_broken(node_ip: str, data_dir: Path, http):
    def broken() -> dict:
        raise RuntimeError("agent is starting")

    paths = Paths(data_dir)
    paths.ensure()
    ctx = make_context(paths, node_ip, {}, Metrics(), [""])
    ctx.status = broken
    runner = await start_console(ctx, node_ip, CONSOLE_PORT)
    try:
        for page in ("/", "/logs", "/models"):
            status, body, _ = await get(http, f"http://{node_ip}:{CONSOLE_PORT}{page}")
            assert status == 200 and "agent is starting" in body
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- cluster (real Envoy)


ENVOY_CONFIG = """
admin:
  address: {{socket_address: {{address: {ip}, port_value: 8001}}}}
static_resources:
  clusters:
  - name: serving_rest
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: serving_rest
      endpoints:
      - lb_endpoints:
        - endpoint: {{hostname: i-test01, address: {{socket_address: {{address: {ip}, port_value: 8501}}}}}}
        - endpoint: {{hostname: i-test02, address: {{socket_address: {{address: {other}, port_value: 8501}}}}}}
    health_checks:
    - timeout: 0.25s
      interval: 0.3s
      unhealthy_threshold: 1
      healthy_threshold: 1
      http_health_check: {{path: /v1/models/half_plus_two}}
"""


async def test_cluster_page_shows_roles_health_params_and_rejection(console: Console, http, ip_factory, tmp_path: Path):
    other = ip_factory()
    console.status["serving_nodes"] = [
        {"instance_id": "i-test01", "ip": console.ip, "role": "model_serving", "sid": 1},
        {"instance_id": "i-test02", "ip": other, "role": "model_serving", "sid": 2},
    ]
    console.status["last_rejection"] = {"at": time.time() - 5, "source": "file", "version": "8", "reasons": ["http.port: may not be 8501"]}
    console.status["up_to_date"] = False
    config = tmp_path / "envoy.yaml"
    config.write_text(ENVOY_CONFIG.format(ip=console.ip, other=other))
    copy_builtin(console.paths.models, "half_plus_two")
    server = await asyncio.to_thread(real_model_server(console, ["half_plus_two"]).start)
    await asyncio.to_thread(server.wait_available, "half_plus_two")
    envoy = await asyncio.create_subprocess_exec(
        "envoy", "-c", str(config), "--use-dynamic-base-id", "--log-level", "error",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            _, body, _ = await get(http, f"{console.base}/api/cluster")
            serving = {s["node"]["ip"]: s["summary"] for s in json.loads(body)["serving"]}
            if serving == {console.ip: "healthy", other: "unhealthy"}:
                break
            assert time.monotonic() < deadline, serving
            await asyncio.sleep(0.3)
        status, page, _ = await get(http, f"{console.base}/")
    finally:
        envoy.terminate()
        await envoy.wait()
        assert await asyncio.to_thread(server.stop) == 0
    assert status == 200
    assert f'data-ip="{console.ip}" data-health="healthy"' in page
    assert f'data-ip="{other}" data-health="unhealthy"' in page
    assert "failed active health check" in page
    assert "http.port: may not be 8501" in page and "metadata rejected" in page
    assert "<th>web.password</th><td>***</td>" in page and "<th>model.name</th><td>half_plus_two</td>" in page
    assert "model_serving" in page and "i-test01" in page


# ---------------------------------------------------------------- metrics


async def test_metrics_in_prometheus_text_format(console: Console, http):
    console.metrics.reconciles.labels(result="applied").inc(3)
    console.metrics.reconcile_seconds.observe(0.2)
    console.metrics.last_success.set(1_700_000_000)
    console.metrics.rejected.inc()
    console.metrics.sync_bytes.inc(4096)
    console.metrics.sync_seconds.observe(1.5)
    console.metrics.commands.labels(result="successful").inc()
    status, body, headers = await get(http, f"{console.base}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in text_string_to_metric_families(body) for s in fam.samples}
    assert samples[("agent_reconciles_total", (("result", "applied"),))] == 3
    assert samples[("agent_reconcile_duration_seconds_count", ())] == 1
    assert samples[("agent_last_reconcile_success_timestamp_seconds", ())] == 1_700_000_000
    assert samples[("agent_rejected_snapshots_total", ())] == 1
    assert samples[("agent_model_sync_bytes_total", ())] == 4096
    assert samples[("agent_model_sync_duration_seconds_sum", ())] == 1.5
    assert samples[("agent_commands_total", (("result", "successful"),))] == 1


# ---------------------------------------------------------------- safety


async def test_security_headers_on_pages_errors_streams_and_static(console: Console, http):
    (console.paths.logs / "envoy.log").write_text("x\n")
    for path in ("/", "/logs", "/logs/view/envoy.log", "/static/console.js", "/nope", "/logs/view/..%2f..%2fetc%2fpasswd", "/metrics"):
        _, _, headers = await get(http, console.base + path)
        csp = headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, path
        assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY", path
    async with http.get(f"{console.base}/logs/follow/envoy.log") as resp:
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_read_only_no_upload_and_bounded_request_bodies(console: Console, http):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/", "/logs", "/models/files/", "/upload", "/logs/view/envoy.log"):
            async with http.request(method, console.base + path, data=b"x" * 100) as resp:
                assert resp.status in (404, 405), (method, path, resp.status)
    assert not any(console.paths.models.iterdir())
    (console.paths.logs / "envoy.log").write_text("x" * 1000)
    async with http.head(f"{console.base}/logs/download/envoy.log") as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "1000"
    async with http.head(f"{console.base}/logs/follow/envoy.log") as resp:
        assert resp.status == 405


async def test_password_guards_everything_and_changes_live(console: Console, http):
    (console.paths.logs / "envoy.log").write_text("secret request line\n")
    (console.paths.models / "half_plus_two" / "1").mkdir(parents=True)
    (console.paths.models / "half_plus_two" / "1" / "saved_model.pb").write_bytes(b"graph")
    console.password[0] = "correct horse"
    paths = ["/", "/logs", "/api/logs", "/logs/view/envoy.log", "/api/logs/tail/envoy.log", "/logs/download/envoy.log",
             "/logs/follow/envoy.log", "/models", "/api/models", "/models/files/half_plus_two/1",
             "/models/download/half_plus_two/1/saved_model.pb", "/api/cluster", "/metrics", "/static/console.css",
             "/no-such-page", "/logs/view/../../etc/passwd"]
    wrong = [{}, basic("admin", "wrong"), basic("root", "correct horse"), basic("admin", "correct horsE"), basic("admin", "")]
    for path in paths:
        for auth in wrong:
            async with http.get(console.base + path, headers=auth) as resp:
                body = await resp.read()
                # 429 once this client's failed logins lock it out for a while.
                assert resp.status in (401, 429), (path, auth, resp.status)
                if resp.status == 401:
                    assert resp.headers["WWW-Authenticate"].startswith("Basic ")
                assert b"secret request line" not in body and b"graph" not in body
    for bad_header in ("Basic !!!", "Basic " + "YWRtaW4=", "Bearer correct horse", "basic"):
        async with http.get(console.base + "/logs", headers={"Authorization": bad_header}) as resp:
            assert resp.status in (401, 429)
    console.runner.app[THROTTLE].succeeded("127.0.0.1")  # the lockout is tested in tests/security
    good = basic("admin", "correct horse")
    status, body, _ = await get(http, f"{console.base}/logs/view/envoy.log", headers=good)
    assert status == 200 and "secret request line" in body

    # An open live view ends when the password changes; the old password stops working.
    async with http.get(f"{console.base}/logs/follow/envoy.log", headers=good) as resp:
        assert resp.status == 200
        console.password[0] = "new password"
        rest = await asyncio.wait_for(resp.content.read(), 5)
        assert b"data:" not in rest
    status, _, _ = await get(http, f"{console.base}/logs", headers=good)
    assert status == 401
    console.runner.app[THROTTLE].succeeded("127.0.0.1")
    status, _, _ = await get(http, f"{console.base}/logs", headers=basic("admin", "new password"))
    assert status == 200
    console.password[0] = ""
    status, _, _ = await get(http, f"{console.base}/logs")
    assert status == 200


SECRET = "TOP-SECRET-7f3a9c"


def attack_corpus() -> list[str]:
    """Request targets that try to read outside the log and model roots (raw, unnormalised)."""
    escapes = [
        "../secret.txt", "../../secret.txt", "../../../../../../etc/passwd", "..%2fsecret.txt", "%2e%2e/secret.txt",
        "%2e%2e%2fsecret.txt", "%2E%2E%2Fsecret.txt", ".%2e/secret.txt", "%2e./secret.txt", "envoy.log/../../secret.txt",
        "%252e%252e/secret.txt", "%252e%252e%252fsecret.txt", "..%252fsecret.txt", "%25252e%25252e%25252fsecret.txt",
        "envoy.log%00", "envoy.log%00.txt", "..%00/secret.txt", "%00../secret.txt",
        "..%5csecret.txt", "%5c..%5csecret.txt", "..%255csecret.txt", "..\\secret.txt", "..\\..\\etc\\passwd",
        "/etc/passwd", "%2fetc%2fpasswd", "%2Fetc/passwd", "//etc/passwd", "file:///etc/passwd",
        "%c0%ae%c0%ae/secret.txt", "%c0%ae%c0%ae%c0%afsecret.txt", "..%c0%afsecret.txt", "%e0%80%ae%e0%80%ae/secret.txt",
        "%ef%bc%8e%ef%bc%8e/secret.txt", "..%c1%9csecret.txt",
        "....//secret.txt", "..;/secret.txt", "..%3b/secret.txt", ".../secret.txt", "./../secret.txt",
        ".hidden", "link-out", "abs-link", "dir-out/secret.txt", "etc-link/passwd",
        "a/" * 1500 + "secret.txt", "..%2f" * 900 + "etc/passwd", "x" * 4000,
    ]
    prefixes = ["/logs/view/", "/logs/download/", "/api/logs/tail/", "/logs/follow/", "/models/files/", "/models/download/"]
    corpus = [prefix + e for prefix in prefixes for e in escapes]
    corpus += ["/static/../../secret.txt", "/static/%2e%2e/%2e%2e/secret.txt", "/static/..%2f..%2fsecret.txt",
               "/static/console.css/../../../secret.txt", "/logs/../secret.txt", "/%2e%2e/secret.txt",
               "/models/files/half_plus_two/1/evil", "/models/download/half_plus_two/1/evil",
               "/models/files/half_plus_two/1/evil-dir/passwd", "/models/download/half_plus_two/1/evil-dir/passwd"]
    return corpus


async def raw_get(ip: str, target: str) -> tuple[int, bytes]:
    """Send the request line exactly as given (clients normalise dot segments)."""
    reader, writer = await asyncio.open_connection(ip, CONSOLE_PORT)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_attack_corpus_is_refused_without_leaking(console: Console, data_dir: Path):
    (data_dir / "secret.txt").write_text(SECRET + "\n")
    (data_dir / "secret-dir").mkdir()
    (data_dir / "secret-dir" / "secret.txt").write_text(SECRET + "\n")
    (data_dir / "secret-dir" / "passwd").write_text(SECRET + "\n")
    logs = console.paths.logs
    (logs / "envoy.log").write_text("fine\n")
    (logs / ".hidden").write_text(SECRET)
    (logs / "link-out").symlink_to("../secret.txt")
    (logs / "abs-link").symlink_to(data_dir / "secret.txt")
    (logs / "dir-out").symlink_to(data_dir / "secret-dir")
    (logs / "etc-link").symlink_to("/etc")
    version = console.paths.models / "half_plus_two" / "1"
    version.mkdir(parents=True)
    (version / "evil").symlink_to(data_dir / "secret.txt")
    (version / "evil-dir").symlink_to(data_dir / "secret-dir")
    corpus = attack_corpus()
    assert len(corpus) >= 50
    for target in corpus:
        status, body = await raw_get(console.ip, target)
        assert status in (403, 404), (target[:120], status)
        assert SECRET.encode() not in body and b"root:x:0:0" not in body, target[:120]
    # The listings do not offer what they would refuse.
    for target in ("/logs", "/api/logs", "/models/files/half_plus_two/1"):
        status, body = await raw_get(console.ip, target)
        assert status == 200
        for name in (b"link-out", b"abs-link", b"dir-out", b"etc-link", b".hidden", b"evil"):
            assert name not in body, (target, name)
    # What stays inside the root still works through a symlink.
    (logs / "current.log").symlink_to("envoy.log")
    status, body = await raw_get(console.ip, "/api/logs/tail/current.log")
    assert status == 200 and b"fine" in body

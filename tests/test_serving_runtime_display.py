"""Each loaded version's runtime and precision, as the real built-in server reports them,
on the console's Models page (and its JSON) and in the console's /metrics."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agent.console import start_console
from agent.metrics import Metrics
from agent.paths import Paths
from tests.harness.serving_support import Server, copy_builtin, write_config
from tests.test_console import CONSOLE_PORT, agent_status, make_context

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "savedmodels"


async def test_models_page_and_metrics_show_runtime_and_precision(node_ip: str, data_dir: Path):
    paths = Paths(data_dir)
    paths.ensure()
    shutil.copytree(FIXTURES / "cnn", paths.models / "cnn")
    copy_builtin(paths.models, "half_plus_two")
    config = data_dir / "models.config"
    write_config(config, [{"name": n, "base_path": paths.models / n} for n in ("cnn", "half_plus_two")])
    server = Server(config, ip=node_ip, extra_args=("--precision=fp32",)).start()
    try:
        server.wait_available("cnn")
        server.wait_available("half_plus_two")
        metrics = Metrics()
        context = make_context(paths, node_ip, agent_status(node_ip), metrics, [""])
        runner = await start_console(replace(context, model_server_url=server.rest), node_ip, CONSOLE_PORT)
        base = f"http://{node_ip}:{CONSOLE_PORT}"
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                async with http.get(f"{base}/api/models") as resp:
                    doc = await resp.json()
                async with http.get(f"{base}/models") as resp:
                    page = await resp.text()
                async with http.get(f"{base}/metrics") as resp:
                    body = await resp.text()
        finally:
            await runner.cleanup()
    finally:
        server.stop()
    shown = {m["name"]: [(v["version"], v["runtime"], v["precision"]) for v in m["versions"]] for m in doc["models"]}
    # The SavedModel runs on OpenVINO; half_plus_two takes x of any rank, which OpenVINO's
    # CPU plugin refuses, so it falls back to ONNX Runtime.
    assert shown == {"cnn": [("1", "openvino", "fp32")], "half_plus_two": [("1", "onnxruntime", "fp32")]}
    assert "openvino fp32" in page and "onnxruntime fp32" in page
    samples = {tuple(sorted(s.labels.items())): s.value for fam in text_string_to_metric_families(body)
               for s in fam.samples if s.name == "agent_model_version_runtime_info"}
    assert samples == {
        (("model", "cnn"), ("precision", "fp32"), ("runtime", "openvino"), ("version", "1")): 1.0,
        (("model", "half_plus_two"), ("precision", "fp32"), ("runtime", "onnxruntime"), ("version", "1")): 1.0,
    }

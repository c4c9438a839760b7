"""Test harness of the built-in model server: models made by project code, a real
`inference-agent serve` subprocess on its own loopback address, and small clients."""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.serving.builtin_models import install_builtin
from tests.harness.addresses import allocate_loopback_ip
from tests.harness.node import http, wait_for


@functools.cache
def _builtin_cache() -> Path:
    root = Path(tempfile.mkdtemp(prefix="serving-builtin-"))
    install_builtin(root)
    return root


def copy_builtin(models_root: Path, name: str, as_name: str | None = None, version: int = 1) -> Path:
    """Copy a built-in model's version 1 to models_root/<as_name>/<version>; returns the model dir."""
    model_dir = models_root / (as_name or name)
    shutil.copytree(_builtin_cache() / name / "1", model_dir / str(version))
    return model_dir


def model_config_text(models: list[dict]) -> str:
    """models.config text; each dict has name, base_path and optional raw `extra` lines."""
    parts = ["model_config_list {"]
    for m in models:
        parts += ["  config {", f'    name: "{m["name"]}"', f'    base_path: "{m["base_path"]}"',
                  '    model_platform: "tensorflow"']
        parts += [f"    {line}" for line in m.get("extra", [])]
        parts.append("  }")
    parts.append("}")
    return "\n".join(parts) + "\n"


def write_config(path: Path, models: list[dict]) -> None:
    """Write models.config atomically, as the agent does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(model_config_text(models))
    os.replace(tmp, path)


def jpeg_bytes(width: int = 320, height: int = 240, color=(200, 30, 60), fmt: str = "JPEG") -> bytes:
    """An encoded solid-color picture."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, fmt)
    return buf.getvalue()


class Server:
    """A real `inference-agent serve` on its own loopback address (ports 8500/8501)."""

    def __init__(self, config: Path, ip: str | None = None, threads: int = 1, extra_args: tuple[str, ...] = (),
                 models_root: Path | None = None):
        self.config = config
        self.ip = ip or allocate_loopback_ip()
        self.threads = threads
        self.extra_args = tuple(extra_args)
        self.models_root = models_root
        # The admin channel, as the agent runs it: a unix socket next to the config.
        self.admin_socket = config.with_name("admin.sock")
        self.log = config.with_name("serve.log")
        self.proc: subprocess.Popen | None = None

    @property
    def rest(self) -> str:
        return f"http://{self.ip}:8501"

    @property
    def grpc_target(self) -> str:
        return f"{self.ip}:8500"

    def start(self) -> "Server":
        """Start and wait until the REST port answers."""
        argv = [sys.executable, "-m", "agent", "serve", f"--host={self.ip}", f"--model_config_file={self.config}",
                "--model_config_file_poll_wait_seconds=1", "--file_system_poll_wait_seconds=1",
                f"--intra_op_threads={self.threads}", f"--admin_socket={self.admin_socket}", *self.extra_args]
        if self.models_root is not None:
            argv.append(f"--models_root={self.models_root}")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        wait_for(lambda: self.proc.poll() is not None or http("GET", f"{self.rest}/v1/models/x", timeout=1)[0] != 0,
                 timeout=30, what="model server to listen")
        assert self.proc.poll() is None, self.log.read_text()
        return self

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)  # the server's own deadline is 12 s; this catches a hang
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"model server did not stop on SIGTERM; its log ends:\n{self.log_tail()}")

    def dump_stacks(self) -> None:
        """Have a running server write every thread's stack to its log (SIGUSR1), for a
        failure message; waits until the dump is there (5 s at most)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        offset = self.log.stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(self.log, "rb") as f:
                f.seek(offset)
                if b"most recent call first" in f.read():
                    return
            time.sleep(0.05)

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server's log (for failure messages)."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"

    def get(self, path: str) -> tuple[int, dict]:
        status, body = http("GET", self.rest + path, timeout=60)
        return status, json.loads(body) if body else {}

    def post(self, path: str, doc=None, raw: bytes | None = None) -> tuple[int, dict]:
        status, body = http("POST", self.rest + path, raw if raw is not None else json.dumps(doc).encode(), timeout=60)
        return status, json.loads(body) if body else {}

    def states(self, model: str) -> dict[int, str]:
        """version -> state of a model ({} when unknown)."""
        status, doc = self.get(f"/v1/models/{model}")
        if status != 200:
            return {}
        return {int(v["version"]): v["state"] for v in doc["model_version_status"]}

    def wait_available(self, model: str, version: int | None = None, timeout: float = 30.0) -> None:
        """Wait until the model (or one version of it) is AVAILABLE."""
        def ready():
            states = self.states(model)
            return states.get(version) == "AVAILABLE" if version else "AVAILABLE" in states.values()
        try:
            wait_for(ready, timeout=timeout, what=f"{model} to be AVAILABLE")
        except AssertionError as e:
            self.dump_stacks()
            raise AssertionError(f"{e}; the server's log ends:\n{self.log_tail()}") from None


def predict_half_plus_two(server: Server, model: str = "half_plus_two", values=(1.0, 2.0, 5.0)):
    """The seed's predict request; (status, predictions or error doc)."""
    status, doc = server.post(f"/v1/models/{model}:predict", {"instances": list(values)})
    return status, doc.get("predictions", doc)


def pair_model(path: Path) -> None:
    """Two inputs a, b [n, k] float32 (k free): `mix` = 2a + b [n, k] and `dot` = sum(a*b) [n].
    a and b of different k fail inside the runtime, past the server's shape checks."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["a", "two"], ["a2"]), helper.make_node("Add", ["a2", "b"], ["mix"]),
             helper.make_node("Mul", ["a", "b"], ["ab"]),
             helper.make_node("ReduceSum", ["ab", "axis"], ["dot"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "pair",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", "k"]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", "k"])],
        [helper.make_tensor_value_info("mix", TensorProto.FLOAT, ["n", "k"]),
         helper.make_tensor_value_info("dot", TensorProto.FLOAT, ["n"])],
        initializer=[helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
                     helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))


def image_model(path: Path, layout: str = "NHWC", dtype=np.uint8, size=(4, 6)) -> None:
    """A tiny image model: the mean of each channel of an image batch ([N, H, W, 3] or [N, 3, H, W])."""
    import onnx
    from onnx import TensorProto, helper

    h, w = size
    elem = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.FLOAT
    shape = ["n", h, w, 3] if layout == "NHWC" else ["n", 3, h, w]
    axes = [1, 2] if layout == "NHWC" else [2, 3]
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f"], ["mean"], axes=axes, keepdims=0)]
    graph = helper.make_graph(nodes, "image_mean", [helper.make_tensor_value_info("image", elem, shape)],
                              [helper.make_tensor_value_info("mean", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))


def echo_model(path: Path) -> None:
    """A string model: input `text` [n] comes back as outputs `text` and `text_bytes`."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["text_out"]), helper.make_node("Identity", ["text"], ["text_bytes"])],
        "echo", [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [helper.make_tensor_value_info("text_out", TensorProto.STRING, ["n"]),
         helper.make_tensor_value_info("text_bytes", TensorProto.STRING, ["n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))

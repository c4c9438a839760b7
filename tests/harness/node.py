"""Test harness: one real node (the agent as a subprocess, with its real Envoy and
model server) on its own loopback address."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import yaml

from agent.ports import envoy_admin_url
from tests.harness.foundation_trees import write_tree


def http(method: str, url: str, body: bytes | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body), status 0 when the connection failed."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, b""


def predict(ip: str, port: int = 8080, model: str = "half_plus_two", instances=(1.0, 2.0, 5.0)) -> tuple[int, dict]:
    """POST a predict request through Envoy."""
    status, body = http("POST", f"http://{ip}:{port}/v1/models/{model}:predict",
                        json.dumps({"instances": list(instances)}).encode())
    try:
        return status, json.loads(body)
    except ValueError:
        return status, {}


class AgentDied(Exception):
    """The agent process under test exited."""


def wait_for(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `condition` until it returns a truthy value; fail after `timeout` seconds.
    Errors while polling (a socket not up yet) count as not yet; AgentDied fails at once."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except AgentDied:
            raise
        except (AssertionError, OSError, KeyError, ValueError) as e:
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")
        time.sleep(interval)


async def until(condition, timeout: float, what: str = "condition", interval: float = 0.05):
    """`wait_for` for async tests: it polls in a thread, so the event loop (and whatever
    load or test double it runs) goes on meanwhile."""
    return await asyncio.to_thread(wait_for, condition, timeout, interval, what)


class Node:
    """A node: data dir, metadata, and the agent process. The metadata is a file the
    node owns (`tree`), or any other source the agent reads (`source`, e.g. metad)."""

    def __init__(self, data_dir: Path, tree: dict | None = None, *, source: str | None = None, ip: str | None = None):
        self.data_dir = data_dir
        self.metadata = data_dir / "metadata.yaml"
        self.tree = tree
        self.ip: str = ip or tree["host"]["ip"]
        self.source = source or str(self.metadata)
        self.proc: subprocess.Popen | None = None
        if tree is not None:
            write_tree(self.metadata, tree)

    @property
    def admin(self) -> str:
        return envoy_admin_url(self.ip)

    def install_models(self) -> None:
        """The built-in models on local disk, as `init` does for s3.type none."""
        subprocess.run([sys.executable, "-m", "agent", "models", "install-builtin", str(self.data_dir / "models")],
                       check=True, capture_output=True)

    def start(self, *extra_args: str) -> "Node":
        """Start the agent (`inference-agent run`, plus `extra_args`); returns at once:
        `wait_serving` waits until Envoy serves a prediction through http.port."""
        log = open(self.data_dir / "agent.stderr", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--metadata", self.source,
             "--data-dir", str(self.data_dir), "--log-format", "json", *extra_args],
            stdout=log, stderr=log, start_new_session=True,
        )
        return self

    def wait_serving(self, port: int = 8080, timeout: float = 60.0) -> None:
        """Wait until a prediction through Envoy succeeds."""
        wait_for(lambda: self.serving(port), timeout, 0.2, f"{self.ip}:{port} to serve")

    def serving(self, port: int = 8080) -> bool:
        """True when a prediction through Envoy succeeds; AgentDied if the agent exited."""
        return self._alive() and predict(self.ip, port)[0] == 200

    def cpu_seconds(self) -> float:
        """CPU time the agent process has used."""
        t = psutil.Process(self.proc.pid).cpu_times()
        return t.user + t.system

    def _alive(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AgentDied(f"agent exited with {self.proc.returncode}: {self.stderr()[-2000:]}")
        return True

    def stderr(self) -> str:
        return (self.data_dir / "agent.stderr").read_text(errors="replace")

    def update(self, tree: dict) -> None:
        """Replace the node's metadata."""
        self.tree = tree
        write_tree(self.metadata, tree)

    def status(self) -> dict:
        """The agent's status through `inference-agent status`."""
        out = subprocess.run([sys.executable, "-m", "agent", "status", "--data-dir", str(self.data_dir)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def envoy_clusters(self) -> dict:
        _, body = http("GET", f"{self.admin}/clusters?format=json")
        return json.loads(body)

    def upstream_hosts(self, cluster: str = "serving_rest") -> set[str]:
        """Addresses Envoy currently has in `cluster` (none while Envoy is not up)."""
        try:
            statuses = self.envoy_clusters().get("cluster_statuses", [])
        except ValueError:
            return set()
        for c in statuses:
            if c["name"] == cluster:
                return {h["address"]["socket_address"]["address"] for h in c.get("host_statuses", [])}
        return set()

    def envoy_pid(self) -> int:
        return json.loads((self.data_dir / "run" / "envoy.json").read_text())["pid"]

    def stop(self) -> None:
        """SIGTERM the agent and wait: it stops its processes."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Children left behind by a killed agent (tests that kill -9 it).
        for record in (self.data_dir / "run").glob("*.json"):
            try:
                pid = json.loads(record.read_text())["pid"]
                os.killpg(pid, signal.SIGKILL)
            except (OSError, ValueError, KeyError):
                pass


def rendered(data_dir: Path) -> dict[str, bytes]:
    """Every rendered file of a node, by path relative to its data dir."""
    conf = data_dir / "conf"
    return {str(p.relative_to(data_dir)): p.read_bytes() for p in sorted(conf.rglob("*")) if p.is_file()}


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())

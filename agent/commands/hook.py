"""`inference-agent hook <name> [params-json]`: the platform's lifecycle services.

The executables in hooks/ run this command with the platform's arguments (its
`service_params` JSON object comes last). Each hook talks to the running agent over
its control socket, except `init`, which does one-shot work before any agent runs.
Exit codes are the platform's contract, listed in docs/hooks.md and in `ExitCode`.

Environment: INFERENCE_AGENT_DATA_DIR (default /data) and INFERENCE_AGENT_METADATA
(default http://metadata/, the platform's metadata service) say where the node keeps
its data and where its metadata comes from, as `--data-dir` and `--metadata` do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Awaitable, Callable

from agent.metadata import DEFAULT_SOURCE as DEFAULT_METADATA
from agent.paths import Paths, default_paths

DATA_DIR_ENV = "INFERENCE_AGENT_DATA_DIR"
METADATA_ENV = "INFERENCE_AGENT_METADATA"
# The monitor must print within 5 s (the platform's rule); leave room for start-up.
MONITOR_BUDGET = 3.5
DRAIN_TIMEOUT = 30.0


class ExitCode(IntEnum):
    """Hook exit codes; the scale refusals (11..15) are `agent.nodeops.scaling.Refusal`."""

    OK = 0
    FAILED = 1
    USAGE = 2
    NO_AGENT = 3
    TIMED_OUT = 4
    REFUSED = 5


def exit_codes() -> dict[int, str]:
    """Every exit code a hook can return, by number, with its name."""
    from agent.nodeops.scaling import Refusal

    return {**{int(c): c.name for c in ExitCode}, **{int(r): r.name for r in Refusal}}


class HookFailed(Exception):
    """The hook cannot do its work; `code` is the exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = int(code)


@dataclass
class Hook:
    """One hook's context: where the node lives, its parameters and its deadline."""

    name: str
    paths: Paths
    metadata: str
    timeout: float
    params: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def remaining(self, reserve: float = 0.0) -> float:
        """Seconds left before this hook's own deadline, less `reserve` (at least 1)."""
        return max(1.0, self.timeout - (time.monotonic() - self.started) - reserve)

    def say(self, message: str) -> None:
        """One line of what the hook did, for the platform's log."""
        print(f"{self.name}: {message}", flush=True)

    async def call(self, method: str, route: str, timeout: float | None = None, **kwargs: Any) -> dict[str, Any]:
        """Call the agent's control API; HookFailed(NO_AGENT) when no agent answers."""
        from agent.clients.control import request

        try:
            status, body = await request(self.paths.control_socket, method, route,
                                         timeout=timeout or self.remaining(), **kwargs)
        except OSError as e:
            raise HookFailed(ExitCode.NO_AGENT, f"no agent runs for {self.paths.data_dir}: {e}") from None
        if status != 200:
            raise HookFailed(ExitCode.FAILED, f"{method} {route}: HTTP {status}: {body}")
        return body

    async def agent_running(self) -> bool:
        """True when the agent answers on its control socket."""
        try:
            await self.call("GET", "/status", timeout=5)
            return True
        except HookFailed:
            return False


# --- one-shot work ------------------------------------------------------------------


async def read_state(hook: Hook):
    """This node's ClusterState, from its metadata read once."""
    from agent.errors import InvalidMetadata
    from agent.metadata import open_source
    from agent.state import parse_cluster_state

    snapshots = open_source(hook.metadata).snapshots()
    try:
        snap = await asyncio.wait_for(anext(snapshots), min(30.0, hook.remaining()))
    except TimeoutError:
        raise HookFailed(ExitCode.FAILED, f"no metadata from {hook.metadata} within 30s") from None
    finally:
        await snapshots.aclose()
    if snap.error or snap.tree is None:
        raise HookFailed(ExitCode.FAILED, f"cannot read metadata from {hook.metadata}: {snap.error}")
    try:
        return parse_cluster_state(snap.tree)
    except InvalidMetadata as e:
        raise HookFailed(ExitCode.REFUSED, "metadata refused:\n  " + "\n  ".join(map(str, e.problems))) from None


async def wait_seeded(hook: Hook) -> dict[str, Any]:
    """Wait until the agent has seeded this model_repo node's MinIO with the built-in
    models staged by init (it does so once, when MinIO first answers: agent/modelstore/repo_node.py);
    FAILED with the agent's last error at the hook's deadline. Returns what was seeded."""
    while True:
        repository = (await hook.call("GET", "/status")).get("repository") or {}
        if repository.get("seed") == "done":
            return repository["seeded"]
        if hook.remaining() <= 3:
            raise HookFailed(ExitCode.FAILED, "the model repository is not seeded: "
                             f"{repository.get('error') or repository.get('seed') or 'unknown'}")
        await asyncio.sleep(0.5)


# --- waiting for the agent ------------------------------------------------------------


async def ensure_agent(hook: Hook) -> None:
    """Make sure the agent runs: under systemd, start its unit; else NO_AGENT."""
    if await hook.agent_running():
        return
    from agent.processes.systemd import AGENT_UNIT, systemd_running

    if not systemd_running():
        raise HookFailed(ExitCode.NO_AGENT,
                         f"no agent runs for {hook.paths.data_dir}; start it (inference-agent run) or its unit")
    await _systemctl(hook, "start", AGENT_UNIT)
    while not await hook.agent_running():
        if hook.remaining() <= 1:
            raise HookFailed(ExitCode.TIMED_OUT, f"{AGENT_UNIT} started but its control socket does not answer")
        await asyncio.sleep(0.5)


async def _systemctl(hook: Hook, *args: str) -> None:
    proc = await asyncio.create_subprocess_exec("systemctl", *args, stdin=asyncio.subprocess.DEVNULL)
    if await asyncio.wait_for(proc.wait(), hook.remaining()) != 0:
        raise HookFailed(ExitCode.FAILED, f"systemctl {' '.join(args)} failed")


async def wait_healthy(hook: Hook) -> dict[str, Any]:
    """Poll the agent's health until healthy; TIMED_OUT with the reasons at the deadline."""
    while True:
        report = await hook.call("GET", "/health", timeout=min(10.0, hook.remaining()))
        if report["healthy"]:
            return report
        if hook.remaining() <= 1:
            raise HookFailed(ExitCode.TIMED_OUT, "not healthy in time: " + "; ".join(report["reasons"]))
        await asyncio.sleep(0.5)


# --- the hooks ----------------------------------------------------------------------


async def hook_init(hook: Hook) -> int:
    """Directories, permissions and built-in models; refuses metadata without the
    credentials its s3.type needs (none are shipped)."""
    state = await read_state(hook)
    from agent.nodeops.prepare import prepare_for_state

    for line in await asyncio.to_thread(prepare_for_state, hook.paths, state):
        hook.say(line)
    return ExitCode.OK


async def hook_start(hook: Hook) -> int:
    """Start the services and wait until this node serves model.name (its health
    check passes); on a model_repo node with MinIO, until the agent has seeded the
    bucket with the built-in models."""
    from agent.state import Role

    await ensure_agent(hook)
    await hook.call("POST", "/services/start")
    await wait_healthy(hook)
    status = await hook.call("GET", "/status")
    node, params = status["node"], status["params"]
    if node.get("role") == Role.MODEL_REPO.value and params.get("s3.type") == "minio":
        seeded = await wait_seeded(hook)
        hook.say(f"model repository {seeded['location']}: built-in models seeded at "
                 f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(seeded['at']))}: "
                 f"{', '.join(seeded['models']) or 'none needed'}")
    what = f"serves {params.get('model.name')}" if node.get("role") == Role.MODEL_SERVING.value else "is up"
    hook.say(f"node {node.get('instance_id')} {what} ({time.monotonic() - hook.started:.1f}s)")
    return ExitCode.OK


async def hook_stop(hook: Hook) -> int:
    """Drain (fail health checks, let in-flight requests finish, bounded), then stop."""
    if not await hook.agent_running():
        hook.say("no agent runs: nothing to stop")
        return ExitCode.OK
    drain = min(float(hook.params.get("drain_timeout", DRAIN_TIMEOUT)), hook.remaining(reserve=15))
    result = await hook.call("POST", "/services/stop", json={"drain_timeout": drain})
    hook.say(f"stopped {', '.join(result['stopped']) or 'nothing'}" + _drained(result.get("drain")))
    return ExitCode.OK


def _drained(drain: dict | None) -> str:
    if not drain:
        return ""
    from agent.nodeops.drain import PEER_MARGIN

    # Only this node's Envoy can be asked (the others' admin is on their loopback): say
    # what it saw, and that the others were given a margin, no more.
    seen = ("this node's Envoy saw it fail its health check; the other Envoys were given "
            f"{PEER_MARGIN:g}s more" if drain["detected"] else "its health check did not fail in time")
    return (f" after draining {drain['seconds']}s ({seen}; "
            f"{drain['in_flight']} request(s) from this node's Envoy still in flight)")


async def hook_restart(hook: Hook) -> int:
    """stop, then start."""
    await hook_stop(hook)
    return await hook_start(hook)


async def hook_health_check(hook: Hook) -> int:
    """0 if and only if the node is healthy."""
    report = await hook.call("GET", "/health", timeout=hook.remaining())
    if report["healthy"]:
        hook.say("healthy")
        return ExitCode.OK
    hook.say("unhealthy: " + "; ".join(report["reasons"]))
    return ExitCode.FAILED


async def hook_health_action(hook: Hook) -> int:
    """Restart what is broken (the agent's unit if the agent itself does not answer,
    under systemd), then wait until healthy."""
    if not await hook.agent_running():
        from agent.processes.systemd import AGENT_UNIT, systemd_running

        if not systemd_running():
            raise HookFailed(ExitCode.NO_AGENT, f"no agent runs for {hook.paths.data_dir}")
        await _systemctl(hook, "restart", AGENT_UNIT)
        hook.say(f"restarted {AGENT_UNIT}")
    else:
        result = await hook.call("POST", "/health/repair")
        hook.say(f"restarted {', '.join(result['restarted'])}" if result["restarted"]
                 else "nothing to restart: " + "; ".join(result["before"]["reasons"] or ["healthy"]))
    await wait_healthy(hook)
    hook.say("healthy")
    return ExitCode.OK


async def hook_monitor(hook: Hook) -> int:
    """Print the monitor items as one JSON object (within the platform's 5 s)."""
    try:
        values = await hook.call("GET", "/monitor", timeout=min(hook.timeout, MONITOR_BUDGET))
    except (HookFailed, TimeoutError):
        values = {"agent_up": 0}
    print(json.dumps(values, sort_keys=True), flush=True)
    return ExitCode.OK


async def _verdict(hook: Hook, body: dict[str, Any]) -> int:
    hook.say(body["message"])
    return int(body["code"])


async def hook_scale_in_check(hook: Hook) -> int:
    """The scale-in pre-check: refuse to remove the last serving node, or nodes while
    no remaining serving node serves model.name."""
    timeout = hook.remaining(reserve=2)
    return await _verdict(hook, await hook.call("GET", f"/scale/in/check?timeout={timeout:.0f}"))


async def hook_scale_in(hook: Hook) -> int:
    """On a remaining node: the pre-check again, then wait until this node's Envoy no
    longer routes to the leaving nodes."""
    return await _verdict(hook, await hook.call("POST", "/scale/in", json={"timeout": hook.remaining(reserve=2)}))


async def hook_scale_out(hook: Hook) -> int:
    """On an existing node: wait until the added serving nodes serve model.name."""
    return await _verdict(hook, await hook.call("POST", "/scale/out", json={"timeout": hook.remaining(reserve=2)}))


async def hook_upgrade(hook: Hook) -> int:
    """After an image upgrade: init's one-shot work again (idempotent), then start."""
    await hook_init(hook)
    return await hook_start(hook)


# name -> (function, default timeout in seconds). The timeouts are the hooks' own
# bounds; platform/cluster.json.mustache gives each service a little more.
HOOKS: dict[str, tuple[Callable[[Hook], Awaitable[int]], float]] = {
    "init": (hook_init, 300),
    "start": (hook_start, 300),
    "stop": (hook_stop, 90),
    "restart": (hook_restart, 390),
    "scale-out": (hook_scale_out, 300),
    "scale-in-check": (hook_scale_in_check, 30),
    "scale-in": (hook_scale_in, 120),
    "health-check": (hook_health_check, 8),
    "health-action": (hook_health_action, 50),
    "monitor": (hook_monitor, 4),
    "upgrade": (hook_upgrade, 600),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `hook`."""
    parser.add_argument("name", choices=sorted(HOOKS), help="the lifecycle service")
    parser.add_argument("params", nargs="?", default="", help="the platform's service_params, a JSON object")
    parser.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV),
                        help=f"data directory (default: ${DATA_DIR_ENV}, else /data)")
    parser.add_argument("--metadata", default=os.environ.get(METADATA_ENV) or DEFAULT_METADATA,
                        help=f"metadata source for one-shot work (default: ${METADATA_ENV}, else {DEFAULT_METADATA})")
    parser.add_argument("--timeout", type=float, help="seconds this hook may take (default: the hook's own)")


def parse_params(text: str) -> dict[str, Any]:
    """The service_params argument: empty, or a JSON object."""
    if not text.strip():
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"must be a JSON object, got {type(value).__name__}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run one hook; its exit code is the platform's answer."""
    function, default_timeout = HOOKS[args.name]
    try:
        params = parse_params(args.params)
    except ValueError as e:
        print(f"{args.name}: invalid params {args.params!r}: {e}", file=sys.stderr)
        return ExitCode.USAGE
    timeout = args.timeout or float(params.get("timeout") or default_timeout)
    hook = Hook(args.name, default_paths(args.data_dir), args.metadata, timeout, params)
    try:
        return int(asyncio.run(asyncio.wait_for(function(hook), timeout)))
    except HookFailed as e:
        print(f"{args.name}: {e}", file=sys.stderr)
        return e.code
    except TimeoutError:
        print(f"{args.name}: did not finish within {timeout:.0f}s", file=sys.stderr)
        return ExitCode.TIMED_OUT

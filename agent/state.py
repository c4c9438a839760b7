"""The cluster as this node sees it: a `/self` metadata tree parsed into typed, immutable
objects. Every tree-level rule lives here; parameter rules live in agent.params."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping

from agent.errors import InvalidMetadata, Problem
from agent.params import Params, parse_params

class Role(str, Enum):
    MODEL_SERVING = "model_serving"
    MODEL_REPO = "model_repo"


# The original app called its serving role `tfserving`; replica roles carry a suffix.
_ROLE_ALIASES = {"tfserving": Role.MODEL_SERVING}


def parse_role(name: str) -> Role | None:
    """The role named by `name` (aliases and `-replica` suffixes accepted), or None."""
    base = name.removesuffix("-replica")
    if base in _ROLE_ALIASES:
        return _ROLE_ALIASES[base]
    try:
        return Role(base)
    except ValueError:
        return None


@dataclass(frozen=True)
class Node:
    """One node of the cluster."""

    instance_id: str
    ip: str
    role: Role
    sid: int
    node_id: str = ""
    cpu: int | None = None
    memory_mib: int | None = None


@dataclass(frozen=True)
class Command:
    """A lifecycle command the platform sent through /self/cmd."""

    id: str
    cmd: str
    timeout: int


@dataclass(frozen=True)
class ClusterState:
    """Everything the agent acts on, validated. Build it with `parse_cluster_state`."""

    me: Node
    serving_nodes: tuple[Node, ...]
    repo_node: Node | None
    params: Params
    cluster_id: str = ""
    adding: frozenset[str] = frozenset()
    deleting: frozenset[str] = frozenset()
    vertical_scaling_roles: tuple[str, ...] = ()
    cmd: Command | None = None

    @property
    def active_serving_nodes(self) -> tuple[Node, ...]:
        """Serving nodes that should receive traffic: those not being removed."""
        return tuple(n for n in self.serving_nodes if n.instance_id not in self.deleting)

    @property
    def leaving(self) -> bool:
        """True while this node is listed in /deleting-hosts."""
        return self.me.instance_id in self.deleting


def _ip(value: Any, where: str, problems: list[Problem]) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        problems.append(Problem(where, f"must be an IP address, got {value!r}"))
        return ""


def _int(value: Any, where: str, problems: list[Problem], required: bool = False) -> int | None:
    if value in (None, ""):
        if required:
            problems.append(Problem(where, "is required"))
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        problems.append(Problem(where, f"must be an integer, got {value!r}"))
        return None


def _node(fields: Any, where: str, role_name: str | None, problems: list[Problem]) -> Node | None:
    if not isinstance(fields, Mapping):
        problems.append(Problem(where, "must be a directory of node keys"))
        return None
    count = len(problems)
    role_name = role_name or str(fields.get("role", ""))
    role = parse_role(role_name)
    if role is None:
        problems.append(Problem(f"{where}/role", f"unknown role {role_name!r} (model_serving, model_repo or tfserving)"))
    if "ip" not in fields:
        problems.append(Problem(f"{where}/ip", "is required"))
    ip = _ip(fields.get("ip"), f"{where}/ip", problems) if "ip" in fields else ""
    instance_id = str(fields.get("instance_id") or where.rsplit("/", 1)[-1])
    sid = _int(fields.get("sid"), f"{where}/sid", problems) or 0
    cpu = _int(fields.get("cpu"), f"{where}/cpu", problems)
    memory = _int(fields.get("memory"), f"{where}/memory", problems)
    if len(problems) > count:
        return None
    return Node(instance_id, ip, role, sid, str(fields.get("node_id", "")), cpu, memory)


def _host_group(tree: Mapping, key: str, problems: list[Problem]) -> list[Node]:
    """Nodes under /hosts, /adding-hosts or /deleting-hosts (`<role>/<instance_id>/...`)."""
    group = tree.get(key) or {}
    if not isinstance(group, Mapping):
        problems.append(Problem(f"/{key}", "must be a directory of roles"))
        return []
    nodes = []
    for role_name, members in sorted(group.items()):
        if not isinstance(members, Mapping):
            problems.append(Problem(f"/{key}/{role_name}", "must be a directory of nodes"))
            continue
        for instance_id, fields in sorted(members.items()):
            node = _node(fields, f"/{key}/{role_name}/{instance_id}", role_name, problems)
            if node:
                nodes.append(node)
    return nodes


def _command(tree: Mapping, problems: list[Problem]) -> Command | None:
    cmd = tree.get("cmd")
    if not isinstance(cmd, Mapping) or not cmd.get("id"):
        return None
    timeout = _int(cmd.get("timeout"), "/cmd/timeout", problems) or 600
    return Command(str(cmd["id"]), str(cmd.get("cmd", "")), timeout)


def parse_cluster_state(tree: Any) -> ClusterState:
    """Parse a `/self` tree; raises InvalidMetadata listing every problem found."""
    if not isinstance(tree, Mapping):
        raise InvalidMetadata([Problem("/", "metadata must be a directory (a mapping), not a value")])
    problems: list[Problem] = []
    host = tree.get("host")
    me = None
    if not isinstance(host, Mapping) or not host:
        problems.append(Problem("/host", "is required (this node's ip, role, instance_id)"))
    else:
        me = _node(host, "/host", None, problems)
    env = tree.get("env") or {}
    if not isinstance(env, Mapping):
        problems.append(Problem("/env", "must be a directory of parameters"))
        env = {}
    params, param_problems = parse_params(env)
    problems += param_problems

    hosts = _host_group(tree, "hosts", problems)
    adding = _host_group(tree, "adding-hosts", problems)
    deleting = _host_group(tree, "deleting-hosts", problems)
    if me and not any(n.instance_id == me.instance_id for n in hosts):
        hosts.append(me)  # a node always knows itself, even before /hosts lists it
    serving = sorted((n for n in hosts if n.role is Role.MODEL_SERVING), key=lambda n: (n.sid, n.ip))
    repos = [n for n in hosts if n.role is Role.MODEL_REPO]
    seen: dict[str, str] = {}
    for n in hosts:
        if n.ip in seen and seen[n.ip] != n.instance_id:
            problems.append(Problem(f"/hosts/*/{n.instance_id}/ip", f"{n.ip} is also the ip of {seen[n.ip]}"))
        seen[n.ip] = n.instance_id
    if len(repos) > 1:
        problems.append(Problem("/hosts/model_repo", f"at most one model_repo node, found {len(repos)}"))
    if params and params.s3_type == "minio" and not repos:
        problems.append(Problem("env/s3.type", "minio needs a model_repo node in /hosts/model_repo"))
    vsr = tree.get("vertical-scaling-roles") or ""
    cmd = _command(tree, problems)
    if problems or me is None or params is None:
        raise InvalidMetadata(problems)
    cluster = tree.get("cluster") if isinstance(tree.get("cluster"), Mapping) else {}
    return ClusterState(
        me=me,
        serving_nodes=tuple(serving),
        repo_node=repos[0] if repos else None,
        params=params,
        cluster_id=str(cluster.get("cluster_id", "")),
        adding=frozenset(n.instance_id for n in adding),
        deleting=frozenset(n.instance_id for n in deleting),
        vertical_scaling_roles=tuple(r for r in str(vsr).split(",") if r),
        cmd=cmd,
    )


def normalize_tree(value: Any) -> Any:
    """Make a tree look as metad serves it: every leaf a string, lists as maps keyed
    "0", "1", ..., booleans as "true"/"false", empty directories dropped."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            v = normalize_tree(v)
            if v != {}:
                out[str(k)] = v
        return out
    if isinstance(value, (list, tuple)):
        return normalize_tree({str(i): v for i, v in enumerate(value)})
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)

"""Rendering: jinja2 templates from templates/ turned into the files a node needs.

Templates get the typed `state` and, for confd-style templates, lookups on the raw
tree (`getv`, `getvs`, `gets`, `ls`, `lsdir`, `exists`) with confd's semantics.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

import jinja2

from agent import PROJECT_ROOT, limits
from agent.paths import Paths
from agent.state import ENVOY_ADMIN_PORT, HEALTH_PORT, SERVING_GRPC_PORT, SERVING_REST_PORT, ClusterState

TEMPLATES_DIR = PROJECT_ROOT / "templates"

ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%ms "
    'upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% client=%DOWNSTREAM_REMOTE_ADDRESS% "%REQ(USER-AGENT)%"\n'
)


class Check(str, Enum):
    """How a staged file is checked before it replaces the live one."""

    NONE = "none"
    ENVOY_BOOTSTRAP = "envoy-bootstrap"  # envoy --mode validate on the file itself
    ENVOY_DYNAMIC = "envoy-dynamic"  # validated inside a throwaway bootstrap


@dataclass(frozen=True)
class RenderedFile:
    """One file as it should be on disk."""

    path: Path
    content: bytes
    mode: int = 0o644
    check: Check = Check.NONE
    # The version_info Envoy reports once it runs this file (listeners and clusters).
    version: str | None = None


def admin_address(node_ip: str) -> str:
    """Envoy admin listens on loopback only: on 127.0.0.1, or on the node's own address
    when that is itself a loopback address (several local nodes on one machine)."""
    return node_ip if ipaddress.ip_address(node_ip).is_loopback else "127.0.0.1"


class TreeLookup:
    """confd's key lookups on a raw `/self` tree. Keys are paths like `/env/model.name`:
    `/` separates levels, a dot does not. Globs match within one level."""

    def __init__(self, tree: Mapping[str, Any]):
        self.tree = tree

    @staticmethod
    def _parts(key: str) -> list[str]:
        return [p for p in key.split("/") if p]

    def _node(self, key: str) -> Any:
        node: Any = self.tree
        for part in self._parts(key):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def _glob(self, pattern: str) -> list[tuple[str, Any]]:
        matches: list[tuple[str, Any]] = [("", self.tree)]
        for part in self._parts(pattern):
            nxt = []
            for path, node in matches:
                if isinstance(node, Mapping):
                    nxt += [(f"{path}/{k}", v) for k, v in node.items() if fnmatch.fnmatchcase(k, part)]
            matches = nxt
        return sorted(matches)

    def exists(self, key: str) -> bool:
        """True when `key` names a leaf or a directory."""
        return self._node(key) is not None

    def getv(self, key: str, *default: str) -> str:
        """The leaf value at `key`, or `default`; a missing key without default is an error."""
        node = self._node(key)
        if isinstance(node, str):
            return node
        if default:
            return default[0]
        raise KeyError(f"key does not exist: {key}")

    def gets(self, pattern: str) -> list[dict[str, str]]:
        """Leaves matching `pattern`, as {key, value} pairs sorted by key."""
        return [{"key": k, "value": v} for k, v in self._glob(pattern) if isinstance(v, str)]

    def getvs(self, pattern: str) -> list[str]:
        """Values of the leaves matching `pattern`, sorted."""
        return sorted(v for _, v in self._glob(pattern) if isinstance(v, str))

    def ls(self, key: str) -> list[str]:
        """Child names of the directory `key`, sorted."""
        node = self._node(key)
        return sorted(node) if isinstance(node, Mapping) else []

    def lsdir(self, key: str) -> list[str]:
        """Child names of `key` that are themselves directories, sorted."""
        node = self._node(key)
        return sorted(k for k, v in node.items() if isinstance(v, Mapping)) if isinstance(node, Mapping) else []


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["hex"] = lambda s: s.encode().hex()
    return env


_ENV = _environment()


def render_template(name: str, tree: Mapping[str, Any] | None = None, **context: Any) -> str:
    """Render one template with the confd lookups bound to `tree`."""
    lookup = TreeLookup(tree or {})
    funcs = {f: getattr(lookup, f) for f in ("exists", "getv", "gets", "getvs", "ls", "lsdir")}
    return _ENV.get_template(name).render(**funcs, **context).lstrip("\n")


def _version(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def public_listeners(state: ClusterState, retired: tuple[tuple[str, int], ...] = ()) -> list[tuple[str, int]]:
    """(kind, port) of every public listener: the configured ports, then retired ones
    still in their grace period (unless a configured port took them over)."""
    current = [("rest", state.params.http_port), ("grpc", state.params.grpc_port)]
    taken = {port for _, port in current}
    return current + [(k, p) for k, p in retired if p not in taken]


def render_envoy(
    state: ClusterState, paths: Paths, tree: Mapping[str, Any] | None = None,
    retired_listeners: tuple[tuple[str, int], ...] = (),
) -> list[RenderedFile]:
    """Envoy's bootstrap and its dynamic listeners, clusters and endpoints."""
    dyn = str(paths.envoy_dynamic)
    common = {"state": state, "dynamic_dir": dyn, "health_port": HEALTH_PORT, "rest_port": SERVING_REST_PORT,
              "limits": limits.ENVOY.as_dict()}
    files = [
        RenderedFile(
            paths.envoy_conf / "bootstrap.yaml",
            render_template(
                "envoy/bootstrap.yaml.j2", tree, admin_ip=admin_address(state.me.ip),
                admin_port=ENVOY_ADMIN_PORT, **common,
            ).encode(),
            check=Check.ENVOY_BOOTSTRAP,
        )
    ]
    lds_ctx = {"access_log_path": str(paths.logs / "envoy.log"), "access_log_format": ACCESS_LOG_FORMAT}
    # Endpoints, then clusters, then listeners: what a file refers to lands first.
    # version_info derives from each file's inputs, so Envoy's admin tells which
    # rendering it runs.
    p = state.params
    endpoints = ",".join(f"{n.instance_id}={n.ip}" for n in state.active_serving_nodes)
    for cluster, port in (("serving_rest", SERVING_REST_PORT), ("serving_grpc", SERVING_GRPC_PORT)):
        files.append(RenderedFile(
            paths.envoy_dynamic / f"eds_{cluster}.yaml",
            render_template(
                "envoy/eds.yaml.j2", tree, version=_version(cluster, endpoints), cluster=cluster,
                port=port, **common,
            ).encode(),
        ))
    files.append(RenderedFile(
        paths.envoy_dynamic / "cds.yaml",
        render_template("envoy/cds.yaml.j2", tree, version=(cds_version := _version("cds", p.model_name)), **common).encode(),
        check=Check.ENVOY_DYNAMIC,
        version=cds_version,
    ))
    listeners = public_listeners(state, retired_listeners)
    lds_version = _version("lds", state.me.ip, str(listeners), str(p.enable_access_log), p.tls_cert, p.tls_key)
    files.append(RenderedFile(
        paths.envoy_dynamic / "lds.yaml",
        render_template("envoy/lds.yaml.j2", tree, version=lds_version, listeners=listeners, **lds_ctx, **common).encode(),
        mode=0o600 if p.tls else 0o644,  # it then holds the TLS private key
        check=Check.ENVOY_DYNAMIC,
        version=lds_version,
    ))
    return files


def render_models_config(models: list[str], paths: Paths, tree: Mapping[str, Any] | None = None) -> RenderedFile:
    """TF Serving's models.config listing `models` under the local model root."""
    text = render_template("serving/models.config.j2", tree, models=models, models_root=str(paths.models))
    return RenderedFile(paths.models_config, text.encode())

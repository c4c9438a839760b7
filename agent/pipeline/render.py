"""Rendering: jinja2 templates from templates/ turned into the files a node needs.

Templates get the typed `state` (never the raw tree: validation happens once, in
agent/params.py and agent/state.py).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

import jinja2

from agent import PROJECT_ROOT, limits
from agent.files import Check, RenderedFile
from agent.modelspec import CANARY, ModelSpec
from agent.paths import Paths
from agent.ports import (
    ENVOY_ADMIN_PORT, HEALTH_PORT, LISTENER_KINDS, SERVING_REST_PORT, envoy_admin_address, serving_cluster,
)
from agent.state import ClusterState

TEMPLATES_DIR = PROJECT_ROOT / "templates"

ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %GRPC_STATUS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION%ms "
    'upstream=%UPSTREAM_HOST% cluster=%UPSTREAM_CLUSTER% client=%DOWNSTREAM_REMOTE_ADDRESS% "%REQ(USER-AGENT)%" '
    # The model and version that served an inference request (the built-in server's
    # response headers; "-" for other answers): which requests a canary took.
    "model=%RESP(X-MODEL-NAME)% version=%RESP(X-MODEL-VERSION)%\n"
)


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


def render_template(name: str, **context: Any) -> str:
    """Render one template with `context`."""
    return _ENV.get_template(name).render(**context).lstrip("\n")


def _version(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def public_listeners(state: ClusterState, retired: tuple[tuple[str, int], ...] = ()) -> list[tuple[str, int]]:
    """(kind, port) of every public listener: the configured ports, then retired ones
    still in their grace period (unless a configured port took them over)."""
    current = [("rest", state.params.http_port), ("grpc", state.params.grpc_port)]
    taken = {port for _, port in current}
    return current + [(k, p) for k, p in retired if p not in taken]


def render_envoy(
    state: ClusterState, paths: Paths,
    retired_listeners: tuple[tuple[str, int], ...] = (), health_model: str | None = None,
) -> list[RenderedFile]:
    """Envoy's bootstrap and its dynamic listeners, clusters and endpoints. Upstreams are
    health-checked on `health_model` (model.name's first model unless given)."""
    dyn = str(paths.envoy_dynamic)
    health_model = health_model or state.params.model_names[0]
    common = {"state": state, "dynamic_dir": dyn, "health_port": HEALTH_PORT, "rest_port": SERVING_REST_PORT,
              "limits": limits.ENVOY.as_dict(), "health_model": health_model}
    files = [
        RenderedFile(
            paths.envoy_conf / "bootstrap.yaml",
            render_template("envoy/bootstrap.yaml.j2", admin_ip=envoy_admin_address(state.me.ip),
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
    for kind, port in LISTENER_KINDS.items():
        cluster = serving_cluster(kind)
        files.append(RenderedFile(
            paths.envoy_dynamic / f"eds_{cluster}.yaml",
            render_template("envoy/eds.yaml.j2", version=_version(cluster, endpoints), cluster=cluster,
                port=port, **common,
            ).encode(),
        ))
    files.append(RenderedFile(
        paths.envoy_dynamic / "cds.yaml",
        render_template("envoy/cds.yaml.j2", version=(cds_version := _version("cds", health_model)), **common).encode(),
        check=Check.ENVOY_DYNAMIC,
        version=cds_version,
    ))
    listeners = public_listeners(state, retired_listeners)
    lds_version = _version("lds", state.me.ip, str(listeners), str(p.enable_access_log), p.tls_cert, p.tls_key)
    files.append(RenderedFile(
        paths.envoy_dynamic / "lds.yaml",
        render_template("envoy/lds.yaml.j2", version=lds_version, listeners=listeners, **lds_ctx, **common).encode(),
        mode=0o600 if p.tls else 0o644,  # it then holds the TLS private key
        check=Check.ENVOY_DYNAMIC,
        version=lds_version,
    ))
    return files


def render_models_config(models: Sequence[ModelSpec | str], paths: Paths) -> RenderedFile:
    """TF Serving's models.config listing `models` (with their version policies and
    labels; a bare name takes TF Serving's defaults) under the local model root."""
    specs = [ModelSpec(m) if isinstance(m, str) else m for m in models]
    text = render_template("serving/models.config.j2", models=specs, models_root=str(paths.models))
    return RenderedFile(paths.models_config, text.encode())


def render_traffic(models: Sequence[ModelSpec | str], canary_percent: int, paths: Paths) -> RenderedFile:
    """The built-in server's traffic split (`--traffic_file`): the canary percentage of
    every model that has a `canary` label. Read by the server's config poll, so a change
    applies live; TF Serving has no such file and ignores it."""
    percent = {m.name: canary_percent for m in models if isinstance(m, ModelSpec) and m.label(CANARY) is not None}
    return RenderedFile(paths.serving_traffic, (json.dumps({"canary_percent": percent}, sort_keys=True) + "\n").encode())

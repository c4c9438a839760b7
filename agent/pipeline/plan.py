"""NodePlan: the desired state of this node, derived from the cluster state alone."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from agent.files import RenderedFile
from agent.modelspec import ModelSpec
from agent.modelstore.repo_node import plan_minio
from agent.paths import Paths
from agent.pipeline.envoy import envoy_argv
from agent.pipeline.render import render_envoy, render_models_config, render_traffic
from agent.ports import SERVING_GRPC_PORT, SERVING_REST_PORT
from agent.processes.names import ENVOY, MODEL_SERVER
from agent.processes.supervisor import ProcessSpec
from agent.state import ClusterState, Role

# Log file names are the seed's: operators look for them on the console.
MODEL_SERVER_LOG = "tensorflow_serving.log"
ENVOY_LOG = "envoy_error.log"
# OpenVINO's compiled-model cache: a restarted model server skips compilation.
COMPILE_CACHE_DIR = "compile_cache"


@dataclass(frozen=True)
class NodePlan:
    """Files to have on disk and processes to have running on this node."""

    state: ClusterState
    files: tuple[RenderedFile, ...]
    processes: tuple[ProcessSpec, ...]
    serving_models: tuple[ModelSpec, ...]
    # Why a process the node should run cannot (e.g. no `minio` executable): status,
    # health and the console show these.
    problems: tuple[str, ...] = ()


def serving_threads(state: ClusterState) -> int:
    """Model server intra-op threads: the node's CPU count from metadata, else the machine's."""
    return state.me.cpu or os.cpu_count() or 1


def make_plan(
    state: ClusterState, paths: Paths,
    serving_models: tuple[ModelSpec | str, ...] | None = None,
    retired_listeners: tuple[tuple[str, int], ...] = (), health_model: str | None = None,
) -> NodePlan:
    """The plan for `state`; `serving_models` is what models.config lists (model.name's
    models, the default, plus models being removed until the others are available; a
    bare name is looked up in model.name); `retired_listeners` are old public ports
    still in their grace period; `health_model` the model Envoy health-checks."""
    from agent.serving.backend import builtin_flags, resolve_backend, server_argv

    listed = {m.name: m for m in state.params.models}
    models = tuple(listed.get(m, ModelSpec(m)) if isinstance(m, str) else m
                   for m in (state.params.models if serving_models is None else serving_models))
    files = render_envoy(state, paths, retired_listeners, health_model)
    bootstrap = files[0]
    processes = [ProcessSpec(
        ENVOY, tuple(envoy_argv(bootstrap.path)), paths.logs / ENVOY_LOG,
        generation=hashlib.sha256(bootstrap.content).hexdigest()[:12],
    )]
    if state.me.role is Role.MODEL_SERVING:
        files.append(render_models_config(models, paths))
        files.append(render_traffic(models, state.params.model_canary_percent, paths))
        argv = server_argv(
            resolve_backend(state.params.serving_backend), paths.models_config, state.me.ip,
            SERVING_GRPC_PORT, SERVING_REST_PORT, serving_threads(state),
            builtin_flags=builtin_flags(state.params, paths.data_dir / COMPILE_CACHE_DIR, paths.logs,
                                        paths.serving_traffic),
            admin_socket=paths.serving_admin_socket, models_root=paths.models,
        )
        processes.append(ProcessSpec(MODEL_SERVER, tuple(argv), paths.logs / MODEL_SERVER_LOG))
    minio = plan_minio(state, paths)
    files.extend(minio.files)
    if minio.process is not None:
        processes.append(minio.process)
    problems = (minio.problem,) if minio.problem else ()
    return NodePlan(state, tuple(files), tuple(processes), models, problems)

"""NodePlan: the desired state of this node, derived from the cluster state alone."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from agent.files import RenderedFile
from agent.modelstore.repo_node import plan_minio
from agent.paths import Paths
from agent.pipeline.envoy import envoy_argv
from agent.pipeline.render import render_envoy, render_models_config
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
    serving_models: tuple[str, ...]
    # Why a process the node should run cannot (e.g. no `minio` executable): status,
    # health and the console show these.
    problems: tuple[str, ...] = ()


def serving_threads(state: ClusterState) -> int:
    """Model server intra-op threads: the node's CPU count from metadata, else the machine's."""
    return state.me.cpu or os.cpu_count() or 1


def make_plan(
    state: ClusterState, paths: Paths, serving_models: tuple[str, ...],
    retired_listeners: tuple[tuple[str, int], ...] = (),
) -> NodePlan:
    """The plan for `state`; `serving_models` is what models.config lists (model.name
    first, plus a model being switched away from until the new one is available);
    `retired_listeners` are old public ports still in their grace period."""
    from agent.serving.backend import builtin_flags, resolve_backend, server_argv

    files = render_envoy(state, paths, retired_listeners)
    bootstrap = files[0]
    processes = [ProcessSpec(
        ENVOY, tuple(envoy_argv(bootstrap.path)), paths.logs / ENVOY_LOG,
        generation=hashlib.sha256(bootstrap.content).hexdigest()[:12],
    )]
    if state.me.role is Role.MODEL_SERVING:
        files.append(render_models_config(list(serving_models), paths))
        argv = server_argv(
            resolve_backend(state.params.serving_backend), paths.models_config, state.me.ip,
            SERVING_GRPC_PORT, SERVING_REST_PORT, serving_threads(state),
            builtin_flags=builtin_flags(state.params, paths.data_dir / COMPILE_CACHE_DIR),
            admin_socket=paths.serving_admin_socket, models_root=paths.models,
        )
        processes.append(ProcessSpec(MODEL_SERVER, tuple(argv), paths.logs / MODEL_SERVER_LOG))
    minio = plan_minio(state, paths)
    files.extend(minio.files)
    if minio.process is not None:
        processes.append(minio.process)
    problems = (minio.problem,) if minio.problem else ()
    return NodePlan(state, tuple(files), tuple(processes), serving_models, problems)

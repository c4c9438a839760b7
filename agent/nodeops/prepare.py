"""Node preparation, one home: the data directory's layout and permissions, the built-in
models where the node needs them, the model_repo node's MinIO data directory. The `init`
hook and `inference-agent up` both prepare nodes with it."""

from __future__ import annotations

from agent.modelstore.repo_node import minio_data_dir
from agent.paths import Paths
from agent.state import ClusterState, Role


def prepare_node(paths: Paths, *, builtin_models: bool, minio_data: bool = False) -> list[str]:
    """Directories and permissions; the built-in models in the models root (served from
    local disk, or staged there for the bucket when `minio_data`); MinIO's data
    directory. Idempotent; returns what it did."""
    from agent.serving.builtin_models import install_builtin  # onnx and numpy load only to prepare

    done = []
    paths.ensure()
    paths.data_dir.chmod(0o755)
    for d in (paths.models, paths.logs, paths.conf):
        d.chmod(0o755)
    done.append(f"directories under {paths.data_dir}")
    if minio_data:
        minio = minio_data_dir(paths)
        minio.mkdir(parents=True, exist_ok=True)
        minio.chmod(0o700)
    if builtin_models:
        install_builtin(paths.models)
        done.append(f"MinIO data in {minio_data_dir(paths)}; built-in models staged in {paths.models} for the bucket"
                    if minio_data else f"built-in models in {paths.models}")
    return done


def prepare_for_state(paths: Paths, state: ClusterState) -> list[str]:
    """`prepare_node` as `state` needs it: built-in models on a serving node that serves
    from local disk (s3.type none), staged for the bucket on a model_repo node with MinIO."""
    serving_local = state.me.role is Role.MODEL_SERVING and state.params.s3_type == "none"
    repo_minio = state.me.role is Role.MODEL_REPO and state.params.s3_type == "minio"
    return prepare_node(paths, builtin_models=serving_local or repo_minio, minio_data=repo_minio)

"""Which model server a node runs (serving.backend) and its command line.

Both backends read the same models.config and serve the same REST (8501) and gRPC
(8500) APIs; `auto` prefers TF Serving where its binary is installed."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

TFSERVING = "tfserving"
BUILTIN = "builtin"
TFSERVING_BINARY = "tensorflow_model_server"


def resolve_backend(setting: str) -> str:
    """'tfserving' or 'builtin' for a serving.backend setting (auto, tfserving, builtin)."""
    if setting == "auto":
        return TFSERVING if shutil.which(TFSERVING_BINARY) else BUILTIN
    if setting in (TFSERVING, BUILTIN):
        return setting
    raise ValueError(f"serving.backend must be auto, tfserving or builtin, got {setting!r}")


def server_argv(
    backend: str,
    models_config: Path,
    host: str,
    grpc_port: int,
    rest_port: int,
    threads: int | None,
    poll_seconds: int = 1,
    builtin_flags: tuple[str, ...] = (),
    admin_socket: Path | None = None,
    models_root: Path | None = None,
) -> list[str]:
    """The command that runs the model server of `backend` on models_config.

    tensorflow_model_server has no bind-address flag: it listens on every address; nor
    an admin socket or a models root (agent/clients/model_server_admin.py). `builtin_flags` (runtime,
    precision, batching, compile cache) go to the built-in server only."""
    common = [
        f"--port={grpc_port}",
        f"--rest_api_port={rest_port}",
        f"--model_config_file={models_config}",
        f"--model_config_file_poll_wait_seconds={poll_seconds}",
        "--file_system_poll_wait_seconds=1",
    ]
    if backend == TFSERVING:
        argv = [shutil.which(TFSERVING_BINARY) or TFSERVING_BINARY, *common]
        if threads:
            argv += [f"--tensorflow_intra_op_parallelism={threads}", f"--tensorflow_inter_op_parallelism={threads}"]
        return argv
    if backend == BUILTIN:
        argv = [sys.executable, "-m", "agent", "serve", f"--host={host}", *common]
        if threads:
            argv.append(f"--intra_op_threads={threads}")
        if admin_socket is not None:
            argv.append(f"--admin_socket={admin_socket}")
        if models_root is not None:
            argv.append(f"--models_root={models_root}")
        return argv + list(builtin_flags)
    raise ValueError(f"unknown model server backend {backend!r}")


REQUEST_LOG = "requests.log"


def builtin_flags(params, cache_dir: Path, logs_dir: Path | None = None,
                  traffic_file: Path | None = None) -> tuple[str, ...]:
    """The built-in server's flags for the serving.runtime/precision/batching parameters,
    the canary split's file when given, and tracing.otlp.endpoint / request.log.* when
    set (unset ones leave the command line as it was)."""
    extra = (f"--traffic_file={traffic_file}",) if traffic_file is not None else ()
    if params.tracing_otlp_endpoint:
        extra += (f"--otlp_endpoint={params.tracing_otlp_endpoint}",)
    if params.request_log_sample_rate > 0 and logs_dir is not None:
        extra += (f"--request_log_file={logs_dir / REQUEST_LOG}",
                  f"--request_log_sample_rate={params.request_log_sample_rate:g}",
                  f"--request_log_max_bytes={params.request_log_max_bytes}")
    return extra + (
        f"--runtime={params.serving_runtime}",
        f"--precision={params.serving_precision}",
        f"--compile_cache_dir={cache_dir}",
        f"--enable_batching={str(params.serving_batching_enable).lower()}",
        f"--max_batch_size={params.serving_batching_max_batch_size}",
        f"--batch_timeout_micros={params.serving_batching_batch_timeout_micros}",
        f"--max_enqueued_batches={params.serving_batching_max_enqueued_batches}",
        f"--num_batch_threads={params.serving_batching_num_batch_threads}",
        f"--allowed_batch_sizes={params.serving_batching_allowed_batch_sizes}",
        f"--pad_variable_length_inputs={str(params.serving_batching_pad_variable_length_inputs).lower()}",
    )


def admin_target(backend: str, admin_socket: Path, host: str, grpc_port: int) -> str:
    """Where the agent sends the model server's admin calls: the built-in server's
    local admin socket, or TF Serving's gRPC port (it has no other)."""
    return f"unix:{admin_socket}" if backend == BUILTIN else f"{host}:{grpc_port}"

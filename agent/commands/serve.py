"""`inference-agent serve`: the built-in model server, with tensorflow_model_server's flags
(--port, --rest_api_port, --model_config_file, --model_config_file_poll_wait_seconds,
--file_system_poll_wait_seconds, --model_name, --model_base_path, and TF Serving's batching
parameters as --enable_batching, --max_batch_size, ...) plus --host, --intra_op_threads,
--runtime, --precision, --compile_cache_dir, --admin_socket and --models_root. Logs go to
stderr; SIGTERM stops it cleanly."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent.ports import SERVING_GRPC_PORT, SERVING_REST_PORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-agent serve`."""
    parser.add_argument("--port", type=int, default=SERVING_GRPC_PORT, help=f"gRPC port (default {SERVING_GRPC_PORT})")
    parser.add_argument("--rest_api_port", type=int, default=SERVING_REST_PORT,
                        help=f"REST port (default {SERVING_REST_PORT})")
    parser.add_argument("--host", default="0.0.0.0", help="bind address of both ports (default 0.0.0.0)")
    parser.add_argument("--model_config_file", type=Path, help="TF Serving models.config (text format)")
    parser.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=int,
        default=0,
        help="re-read the config file this often; 0 reads it once (default 0)",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=int,
        default=1,
        help="scan base paths for new or removed versions this often (default 1)",
    )
    parser.add_argument("--model_name", default="default", help="model name when serving one --model_base_path")
    parser.add_argument("--model_base_path", type=Path, help="serve the versions under this path (no config file)")
    parser.add_argument(
        "--intra_op_threads", type=int, default=0, help="threads per inference (default: the CPU count)"
    )
    parser.add_argument("--runtime", default="auto", choices=["auto", "openvino", "onnxruntime"],
                        help="auto: OpenVINO for every format it reads, ONNX Runtime for the ONNX models it cannot run")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                        help="inference precision; auto = the runtime's best on this CPU")
    parser.add_argument("--compile_cache_dir", type=Path, help="OpenVINO compiled-model cache (faster restarts)")
    # TF Serving's batching parameters, as flags.
    parser.add_argument("--enable_batching", default="true", help="merge concurrent requests into batches (true/false)")
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_timeout_micros", type=int, default=1000)
    parser.add_argument("--max_enqueued_batches", type=int, default=64)
    parser.add_argument("--num_batch_threads", type=int, default=1)
    parser.add_argument("--allowed_batch_sizes", default="", help="comma-separated, the last equal to max_batch_size")
    parser.add_argument("--pad_variable_length_inputs", default="false", help="true/false")
    parser.add_argument(
        "--max_request_bytes", type=int, default=None,
        help="largest REST body or gRPC message accepted (default 64 MiB)",
    )
    parser.add_argument(
        "--max_concurrent_requests", type=int, default=None,
        help="inference requests in progress; past it 503/UNAVAILABLE (default 64)",
    )
    parser.add_argument("--admin_socket", type=Path,
                        help="serve admin calls (HandleReloadConfigRequest) on this unix socket, mode 0600; "
                             "the network ports always refuse them")
    parser.add_argument("--models_root", type=Path,
                        help="refuse any config whose base_path lies outside this directory")
    parser.add_argument("--traffic_file", type=Path,
                        help="JSON {\"canary_percent\": {model: percent}}: the share of unversioned requests sent "
                             "to each model's `canary` label; reread with the config file")
    parser.add_argument("--otlp_endpoint", default="",
                        help="OTLP/gRPC collector host:port for the server's spans (default: no tracing)")
    parser.add_argument("--request_log_file", type=Path, help="sampled request log (JSON lines); default: none")
    parser.add_argument("--request_log_sample_rate", type=float, default=0.0,
                        help="share of requests logged, 0 to 1 (default 0: none)")
    parser.add_argument("--request_log_max_bytes", type=int, default=4096,
                        help="bytes kept of each logged input and output (default 4096)")
    parser.add_argument("--log_level", default="info", help="debug, info, warning or error")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; non-zero exit when a port cannot be opened."""
    import asyncio

    import agent.log
    from agent.serving import limits
    from agent.serving.batching import BatchingOptions, parse_sizes
    from agent.serving.server import ServerOptions

    agent.log.setup(level=args.log_level)
    try:
        batching = BatchingOptions(
            enabled=_flag(args.enable_batching, "enable_batching"),
            max_batch_size=args.max_batch_size,
            batch_timeout_micros=args.batch_timeout_micros,
            max_enqueued_batches=args.max_enqueued_batches,
            num_batch_threads=args.num_batch_threads,
            allowed_batch_sizes=parse_sizes(args.allowed_batch_sizes),
            pad_variable_length_inputs=_flag(args.pad_variable_length_inputs, "pad_variable_length_inputs"),
        )
    except ValueError as e:
        agent.log.get(__name__).error("bad batching flags", error=str(e))
        return 2
    options = ServerOptions(
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port,
        models_config=args.model_config_file.absolute() if args.model_config_file else None,
        traffic_file=args.traffic_file.absolute() if args.traffic_file else None,
        config_poll_seconds=args.model_config_file_poll_wait_seconds,
        fs_poll_seconds=args.file_system_poll_wait_seconds,
        threads=max(0, args.intra_op_threads),
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        runtime=args.runtime,
        precision=args.precision,
        compile_cache_dir=args.compile_cache_dir.absolute() if args.compile_cache_dir else None,
        batching=batching,
        max_request_bytes=args.max_request_bytes or limits.MAX_REST_BODY_BYTES,
        max_concurrent_requests=args.max_concurrent_requests or limits.MAX_CONCURRENT_REQUESTS,
        admin_socket=args.admin_socket.absolute() if args.admin_socket else None,
        models_root=args.models_root.absolute() if args.models_root else None,
        otlp_endpoint=args.otlp_endpoint,
        request_log_file=args.request_log_file.absolute() if args.request_log_file else None,
        request_log_sample_rate=args.request_log_sample_rate,
        request_log_max_bytes=args.request_log_max_bytes,
    )
    if not 0.0 <= options.request_log_sample_rate <= 1.0 or options.request_log_max_bytes < 1:
        agent.log.get(__name__).error("bad request log flags: --request_log_sample_rate must be within 0 and 1, "
                                      "--request_log_max_bytes at least 1",
                                      sample_rate=options.request_log_sample_rate, max_bytes=options.request_log_max_bytes)
        return 2
    code = asyncio.run(_serve(options))
    _exit_past_stuck_threads(code)
    return code


# Longer than a graceful stop needs (in-flight requests get 5 s); the supervisor's
# SIGKILL may come first.
STOP_DEADLINE_SECONDS = 12


def _exit_past_stuck_threads(code: int) -> None:
    """Exit now if a runtime still holds a worker thread after the server stopped.

    Python joins executor threads at exit; a load or inference stuck inside a runtime
    would keep a stopped server (and its supervisor's SIGTERM) waiting forever."""
    import logging
    import os
    import sys
    import threading

    import agent.log

    stuck = sorted(t.name for t in threading.enumerate()
                   if t.name.startswith(("loading", "inference")) and t.is_alive())
    if stuck:
        agent.log.get(__name__).warning("exiting past threads still inside a runtime", threads=stuck)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _flag(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"--{name} must be true or false, got {text!r}")


async def _serve(options) -> int:
    import asyncio
    import faulthandler
    import signal

    import agent.log
    from agent.serving.server import ModelServer

    log = agent.log.get(__name__)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop() -> None:
        # A graceful stop that itself hangs (a runtime call that never returns) still
        # ends: faulthandler's own thread, which needs no GIL, writes every thread's
        # stack to the log and exits.
        faulthandler.dump_traceback_later(STOP_DEADLINE_SECONDS, exit=True)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # operators: `kill -USR1` shows where it is
    server = ModelServer(options)
    # The initial load can take long (or hang inside a runtime): a stop request must
    # not wait for it.
    starting = asyncio.create_task(server.start(), name="start")
    stopping = asyncio.create_task(stop.wait(), name="wait-for-stop")
    code = 0
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            try:
                starting.result()
            except OSError as e:
                log.error("model server cannot start", error=str(e), host=options.host)
                code = 1
            else:
                await stopping
        else:
            log.info("stop requested during the initial load")
    finally:
        for task in (starting, stopping):
            task.cancel()
        await asyncio.gather(starting, stopping, return_exceptions=True)
        log.info("stopping model server")
        await server.stop()
    return code

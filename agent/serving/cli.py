"""`inference-agent serve`: the built-in model server, with tensorflow_model_server's flags
(--port, --rest_api_port, --model_config_file, --model_config_file_poll_wait_seconds,
--file_system_poll_wait_seconds, --model_name, --model_base_path) plus --host,
--intra_op_threads, --admin_socket and --models_root. Logs go to stderr; SIGTERM stops it cleanly."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-agent serve`."""
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    parser.add_argument("--rest_api_port", type=int, default=8501, help="REST port (default 8501)")
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
    parser.add_argument("--admin_socket", type=Path,
                        help="serve admin calls (HandleReloadConfigRequest) on this unix socket, mode 0600; "
                             "the network ports always refuse them")
    parser.add_argument("--models_root", type=Path,
                        help="refuse any config whose base_path lies outside this directory")
    parser.add_argument("--log_level", default="info", help="debug, info, warning or error")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; non-zero exit when a port cannot be opened."""
    import asyncio

    import agent.log
    from agent.serving.server import ServerOptions

    agent.log.setup(level=args.log_level)
    options = ServerOptions(
        host=args.host,
        grpc_port=args.port,
        rest_port=args.rest_api_port,
        models_config=args.model_config_file.absolute() if args.model_config_file else None,
        config_poll_seconds=args.model_config_file_poll_wait_seconds,
        fs_poll_seconds=args.file_system_poll_wait_seconds,
        threads=max(0, args.intra_op_threads),
        model_name=args.model_name,
        model_base_path=args.model_base_path,
        admin_socket=args.admin_socket.absolute() if args.admin_socket else None,
        models_root=args.models_root.absolute() if args.models_root else None,
    )
    return asyncio.run(_serve(options))


async def _serve(options) -> int:
    import asyncio
    import signal

    import agent.log
    from agent.serving.server import ModelServer

    log = agent.log.get(__name__)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = ModelServer(options)
    try:
        await server.start()
    except OSError as e:
        log.error("model server cannot start", error=str(e), host=options.host)
        await server.stop()
        return 1
    await stop.wait()
    log.info("stopping model server")
    await server.stop()
    return 0

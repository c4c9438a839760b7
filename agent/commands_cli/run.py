"""`inference-agent run`: the node agent daemon."""

from __future__ import annotations

import argparse
import asyncio
import signal

from agent.commands_cli.common import add_data_dir, add_logging, paths_from, setup_logging

DEFAULT_METADATA = "http://metadata/"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `run`."""
    parser.add_argument(
        "--metadata", default=DEFAULT_METADATA,
        help="metadata source: a YAML/JSON file, http://metad[,http://metad2], or etcd://host:port[,host:port]/prefix "
             f"(default: {DEFAULT_METADATA})",
    )
    add_data_dir(parser)
    parser.add_argument("--no-console", action="store_true", help="do not serve the web console")
    add_logging(parser)


async def serve_until_signalled(coro) -> None:
    """Run `coro` as a task and cancel it cleanly on SIGTERM or SIGINT."""
    task = asyncio.create_task(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM."""
    from agent.daemon import Agent
    from agent.metadata import open_source

    paths = paths_from(args)
    paths.ensure()
    setup_logging(args, paths)
    agent = Agent(paths, open_source(args.metadata), console=not args.no_console)
    asyncio.run(serve_until_signalled(agent.run()))
    return 0

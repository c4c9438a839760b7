"""`inference-agent status`: the running agent's status, from its control socket."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from agent.commands.common import add_data_dir, paths_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `status`."""
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    """Print the status as JSON; exit 1 when no agent runs."""
    from agent.clients.control import request

    try:
        _, body = asyncio.run(request(paths_from(args).control_socket, "GET", "/status"))
    except OSError as e:
        print(f"status: {e}", file=sys.stderr)
        return 1
    json.dump(body, sys.stdout, indent=2, sort_keys=True)
    print()
    return 0

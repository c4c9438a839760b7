"""`inference-agent up`: a local cluster on embedded defaults (the README's main command).

With no argument it runs one serving node on 127.0.0.1 from the shipped single-node
metadata, with the built-in models, everything under ./inference-data.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

from agent import PROJECT_ROOT
from agent.commands_cli.common import add_logging, setup_logging
from agent.paths import Paths

SINGLE_NODE_EXAMPLE = PROJECT_ROOT / "examples" / "single-node.yaml"
DEFAULT_DATA_DIR = "inference-data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `up`."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"data directory (default: ./{DEFAULT_DATA_DIR})")
    parser.add_argument(
        "--metadata",
        help="metadata file to run from (default: a copy of examples/single-node.yaml in the data "
             "directory, which you can edit while the node runs)",
    )
    add_logging(parser)


def prepare_single_node(paths: Paths, metadata: str | None) -> Path:
    """Create the data directory, the built-in models and the metadata file; return its path."""
    from agent.serving.builtin_models import install_builtin

    paths.ensure()
    install_builtin(paths.models)
    if metadata:
        return Path(metadata).resolve()
    live = paths.data_dir / "metadata.yaml"
    if not live.exists():
        shutil.copyfile(SINGLE_NODE_EXAMPLE, live)
    return live


def run(args: argparse.Namespace) -> int:
    """Prepare and run a single node until Ctrl-C."""
    from agent.commands_cli.run import serve_until_signalled
    from agent.daemon import Agent
    from agent.metadata.file import FileSource, load_tree_file

    paths = Paths(Path(args.data_dir).resolve())
    setup_logging(args, paths)
    metadata = prepare_single_node(paths, args.metadata)
    ip = load_tree_file(metadata).get("host", {}).get("ip", "127.0.0.1")
    print(
        f"Inference Engine node on {ip}: data in {paths.data_dir}, metadata in {metadata}\n"
        f"  REST:    curl -d '{{\"instances\": [1.0, 2.0, 5.0]}}' -X POST http://{ip}:8080/v1/models/half_plus_two:predict\n"
        f"  gRPC:    {ip}:8081 (tensorflow.serving.PredictionService)\n"
        f"  console: http://{ip}:8090/\n"
        "Ctrl-C stops the node.",
        file=sys.stderr,
    )
    asyncio.run(serve_until_signalled(Agent(paths, FileSource(metadata)).run()))
    return 0

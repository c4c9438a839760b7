"""`inference-agent render`: render every file of a node once, without running anything."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.commands.common import add_data_dir, paths_from, read_metadata_file
from agent.errors import InvalidMetadata


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `render`."""
    parser.add_argument("--metadata", required=True, help="metadata file (YAML or JSON /self tree)")
    parser.add_argument("--out", required=True, help="directory to write the files into")
    add_data_dir(parser)


def run(args: argparse.Namespace) -> int:
    """Write the node's files under --out, laid out as under the data directory."""
    import asyncio

    from agent.files import replace_files
    from agent.files import RenderedFile
    from agent.pipeline.plan import make_plan
    from agent.state import parse_cluster_state

    paths = paths_from(args)
    try:
        tree = read_metadata_file(args.metadata)
        state = parse_cluster_state(tree)
    except ValueError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    except InvalidMetadata as e:
        print("invalid metadata:\n  " + "\n  ".join(map(str, e.problems)), file=sys.stderr)
        return 1
    out = Path(args.out).resolve()
    plan = make_plan(state, paths)
    files = [RenderedFile(out / f.path.relative_to(paths.data_dir), f.content, f.mode) for f in plan.files]
    asyncio.run(replace_files(files))
    for f in files:
        print(f.path)
    return 0

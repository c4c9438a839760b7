"""`inference-agent validate`: check a metadata file as the agent would."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from agent.commands.common import read_metadata_file
from agent.errors import InvalidMetadata


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `validate`."""
    parser.add_argument("--metadata", required=True, help="metadata file (YAML or JSON /self tree)")


async def _check_with_envoy(tree: dict) -> None:
    from agent.files import stage
    from agent.paths import Paths
    from agent.pipeline.envoy import check_staged
    from agent.pipeline.plan import make_plan
    from agent.state import parse_cluster_state

    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(Path(tmp))
        paths.ensure()
        state = parse_cluster_state(tree)
        plan = make_plan(state, paths)
        await check_staged([stage(f) for f in plan.files], paths.envoy_dynamic)


def run(args: argparse.Namespace) -> int:
    """Exit 0 when the metadata is valid, 1 with every reason when not."""
    from agent.files import CheckFailed

    try:
        tree = read_metadata_file(args.metadata)
        asyncio.run(_check_with_envoy(tree))
    except ValueError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 1
    except InvalidMetadata as e:
        print(f"invalid: {args.metadata}", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except CheckFailed as e:
        print(f"invalid: {args.metadata}: {e}", file=sys.stderr)
        return 1
    print(f"valid: {args.metadata}")
    return 0

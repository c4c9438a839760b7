"""`inference-agent models push DIR --name NAME [--version N]`: upload one model version.

The destination is the node's model store (s3.type minio or ois), or its local models
root when s3.type is none. The store settings come from --metadata, or by default from
the running agent's last good metadata tree in the data directory. On a terminal it
draws a progress bar on stderr; it prints the result as JSON on stdout otherwise.
Exit 0 once the version is complete and verified, 1 when the push failed, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-agent models push`."""
    parser.add_argument("dir", help="the directory of one model version (a SavedModel, model.onnx, an IR pair)")
    parser.add_argument("--name", required=True, help="model name (model.name), e.g. mnist")
    parser.add_argument("--version", type=int, default=None,
                        help="version number (default: the newest present + 1); an existing version is refused")
    parser.add_argument("--metadata", default=None,
                        help="YAML/JSON file holding the /self tree (default: the agent's last good tree in the data dir)")
    parser.add_argument("--data-dir", default=None, help="node data directory (default /data)")
    parser.add_argument("--json", action="store_true", help="print the JSON summary even on a terminal")


def run(args: argparse.Namespace) -> int:
    """Run one push; see the module docstring for output and exit codes."""
    import asyncio
    from pathlib import Path

    from agent import log as agent_log
    from agent.commands.sync import ProgressBar
    from agent.modelstore.listing import VERSION_RE
    from agent.modelstore.push import PushError, push_to_root, push_to_store
    from agent.modelspec import valid_model_name
    from agent.paths import default_paths

    agent_log.setup(level="warning")
    if not valid_model_name(args.name):
        return _fail(f"invalid model name {args.name!r} (letters, digits, '.', '_', '-'; not starting with '.')", 2)
    if args.version is not None and not VERSION_RE.match(str(args.version)):
        return _fail(f"invalid version {args.version} (a non-negative integer below 10^19)", 2)
    paths = default_paths(args.data_dir)
    try:
        state = _state(args.metadata, paths)
    except ValueError as e:
        return _fail(str(e), 2)
    from agent.modelstore import store_config_for

    store = store_config_for(state)
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    source = Path(args.dir)
    try:
        if store is None:
            result = asyncio.run(push_to_root(paths.models, source, args.name, args.version, progress=bar))
        else:
            result = asyncio.run(push_to_store(store, source, args.name, args.version, progress=bar))
    except PushError as e:
        if bar is not None:
            bar.close()
        return _fail(str(e), 1)
    except OSError as e:
        if bar is not None:
            bar.close()
        return _fail(f"{e.filename or source}: {e.strerror or e}", 1)
    if bar is not None:
        bar.close()
    if sys.stdout.isatty() and not args.json:
        print(f"{result.model}: version {result.version} pushed to {result.destination}: "
              f"{result.files} files, {result.bytes / (1 << 20):.1f} MiB, {result.seconds:.2f} s")
    else:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    return 0


def _state(metadata: str | None, paths):
    """The cluster state from --metadata, or from the agent's last good tree."""
    from pathlib import Path

    from agent.errors import InvalidMetadata
    from agent.metadata.cache import LastGoodTree
    from agent.metadata.file import load_tree_file
    from agent.state import parse_cluster_state

    if metadata:
        tree = load_tree_file(Path(metadata))
    else:
        snapshot = LastGoodTree(paths.state / "last-good-tree.json").load()
        if snapshot is None:
            raise ValueError(f"no metadata: pass --metadata FILE (no agent state in {paths.state})")
        tree = snapshot.tree
    try:
        return parse_cluster_state(tree)
    except InvalidMetadata as e:
        raise ValueError("invalid metadata: " + "; ".join(str(p) for p in e.problems)) from e


def _fail(message: str, code: int) -> int:
    print(f"inference-agent models push: {message}", file=sys.stderr)
    return code

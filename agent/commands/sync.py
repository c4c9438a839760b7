"""`inference-agent sync`: sync the configured models from the model store once.

On a terminal it draws a progress bar on stderr and prints a short summary; otherwise it
prints the result as one JSON object on stdout. Exit 0 when the local model matches the
store, 1 when the sync failed, 2 when the metadata is unusable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

# How many times a sync waits for versions still being uploaded before it reports them pending.
PENDING_ROUNDS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-agent sync`."""
    parser.add_argument("--metadata", required=True, help="YAML/JSON file holding the /self tree")
    parser.add_argument("--data-dir", default=None, help="node data directory (default /data); models go to <data-dir>/models")
    parser.add_argument("--model", default=None, help="model to sync instead of model.name's models")
    parser.add_argument("--json", action="store_true", help="print the JSON summary even on a terminal")


def run(args: argparse.Namespace) -> int:
    """Run one sync; see the module docstring for output and exit codes."""
    import asyncio
    from pathlib import Path

    from agent import log as agent_log
    from agent.errors import InvalidMetadata
    from agent.metadata.file import load_tree_file
    from agent.modelstore import store_config_for
    from agent.modelstore.sync import sync_model
    from agent.paths import default_paths
    from agent.state import parse_cluster_state

    agent_log.setup(level="warning")
    try:
        state = parse_cluster_state(load_tree_file(Path(args.metadata)))
    except ValueError as e:  # unreadable file
        return _fail(str(e), 2)
    except InvalidMetadata as e:
        return _fail("invalid metadata: " + "; ".join(str(p) for p in e.problems), 2)
    if args.model is None and len(state.params.model_names) > 1:
        # Several models: one sync each, in model.name's order; the worst exit code.
        return max([run(argparse.Namespace(**{**vars(args), "model": m})) for m in state.params.model_names])
    store = store_config_for(state)
    model = args.model or state.params.model_names[0]
    interactive = sys.stdout.isatty() and not args.json
    if store is None:
        message = "s3.type is none: models live on local disk, nothing to sync"
        if interactive:
            print(message)
        else:
            print(json.dumps({"model": model, "skipped": message}))
        return 0
    paths = default_paths(args.data_dir)
    paths.models.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    result = asyncio.run(sync_model(store, model, paths.models, progress=bar))
    for _ in range(PENDING_ROUNDS):
        if result.retry_after is None or result.error:
            break
        # A version is still being uploaded: wait until it has been quiet, then take it.
        print(f"inference-agent sync: version(s) {', '.join(map(str, result.versions_pending))} still changing "
              f"in the store; retrying in {result.retry_after:.1f} s", file=sys.stderr)
        time.sleep(result.retry_after + 0.1)
        result = asyncio.run(sync_model(store, model, paths.models, progress=bar))
    if bar is not None:
        bar.close()
    if interactive:
        _print_summary(result.to_dict(), sys.stdout)
    else:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    if result.error:
        print(f"inference-agent sync: {result.error}", file=sys.stderr)
        return 1
    if result.versions_pending and result.retry_after is not None:
        print(f"inference-agent sync: version(s) {result.versions_pending} are still changing in the store", file=sys.stderr)
        return 1
    if result.versions_pending:  # only pushes that died long ago: nothing will change by waiting
        print(f"inference-agent sync: version(s) {result.versions_pending} hold an unfinished `models push` "
              "(its marker is over an hour old); delete them from the store or push again", file=sys.stderr)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"inference-agent sync: {message}", file=sys.stderr)
    return code


def _print_summary(r: dict[str, Any], out: TextIO) -> None:
    def vs(key: str) -> str:
        return ",".join(map(str, r[key])) or "-"

    print(
        f"{r['model']}: added {vs('versions_added')}, replaced {vs('versions_replaced')}, "
        f"removed {vs('versions_removed')}, kept {vs('versions_kept')}; "
        f"{_mib(r['bytes_downloaded'])} downloaded, {r['objects_listed']} objects listed, {r['seconds']:.2f} s",
        file=out,
    )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


class ProgressBar:
    """A one-line progress bar redrawn in place on a terminal."""

    WIDTH = 30

    def __init__(self, out: TextIO):
        self.out = out
        self.started = time.monotonic()
        self.drawn = False

    def __call__(self, p: Any) -> None:
        if p.phase == "listing":
            line = "listing the model store..."
        else:
            frac = p.bytes_done / p.bytes_total if p.bytes_total else 1.0
            filled = int(frac * self.WIDTH)
            rate = p.bytes_done / max(1e-6, time.monotonic() - self.started)
            line = (
                f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {frac * 100:5.1f}%  "
                f"{p.files_done}/{p.files_total} files  {_mib(p.bytes_done)}/{_mib(p.bytes_total)}  {_mib(int(rate))}/s"
            )
        self.out.write("\r\x1b[K" + line)
        self.out.flush()
        self.drawn = True

    def close(self) -> None:
        """End the bar's line."""
        if self.drawn:
            self.out.write("\n")
            self.out.flush()

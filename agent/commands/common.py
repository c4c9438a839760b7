"""Arguments and helpers shared by the agent's own subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

from agent import limits, log
from agent.paths import Paths, default_paths


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    """--data-dir: where models, logs, config and state live (default: /data)."""
    parser.add_argument("--data-dir", help="data directory (default: /data on platform nodes)")


def add_logging(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format."""
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["json", "console"], help="default: json unless on a terminal")
    parser.add_argument("--log-max-bytes", type=int, default=limits.LOG_MAX_BYTES,
                        help=f"rotate a log past this size (default {limits.LOG_MAX_BYTES})")
    parser.add_argument("--log-backups", type=int, default=limits.LOG_BACKUPS,
                        help=f"rotated files kept per log (default {limits.LOG_BACKUPS})")


def setup_logging(args: argparse.Namespace, paths: Paths | None = None) -> None:
    """Configure logging from the arguments; the daemon also logs to <logs>/agent.log."""
    json_logs = None if args.log_format is None else args.log_format == "json"
    log.setup(args.log_level, json=json_logs, log_file=(paths.logs / "agent.log") if paths else None,
              max_bytes=max(1, args.log_max_bytes), backups=max(0, args.log_backups))


def paths_from(args: argparse.Namespace) -> Paths:
    """The Paths for --data-dir."""
    return default_paths(args.data_dir)


def read_metadata_file(path: str) -> dict:
    """Load a metadata file; ValueError names the file and the problem."""
    from agent.metadata.file import load_tree_file

    return load_tree_file(Path(path))

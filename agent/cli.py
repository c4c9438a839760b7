"""`inference-agent` command line. Each subcommand lives in the module that owns its
work; that module provides `add_arguments(parser)` and `run(args) -> int`."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Iterable, NoReturn

from agent import __version__

# name -> (module, help). Command modules keep heavy imports (ONNX Runtime, gRPC,
# boto3) inside run(), so building the parser stays fast.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("agent.commands.run", "run the node agent (daemon)"),
    "up": ("agent.commands.up", "run a local cluster on embedded defaults"),
    "render": ("agent.commands.render", "render every config file once from metadata"),
    "validate": ("agent.commands.validate", "check metadata; non-zero exit with the reasons"),
    "status": ("agent.commands.status", "show the running agent's status"),
    "serve": ("agent.commands.serve", "run the built-in model server (TF Serving's flags)"),
    "models": ("agent.commands.models", "manage built-in models"),
    "sync": ("agent.commands.sync", "sync the model from the model store once"),
    "hook": ("agent.commands.hook", "run one of the platform's lifecycle hooks (hooks/, docs/hooks.md)"),
}


def build_parser(load: Iterable[str] = COMMANDS) -> argparse.ArgumentParser:
    """The argument parser; only the commands in `load` get their own arguments (a
    command's module is imported for them, which costs its imports: jsonschema, yaml...)."""
    parser = argparse.ArgumentParser(prog="inference-agent", description="Inference Engine node agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name not in load:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if not module_name.startswith(e.name or "\0"):
                raise
            p.set_defaults(_missing=module_name)
            continue
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


# Commands that close and flush every file they write before they return. As a process,
# they end with os._exit once stdout, stderr and the log handlers are flushed: tearing the
# interpreter down (every module and object freed one by one) cost `sync` ~55 ms of its
# ~0.2 s start-up and exit, and writes nothing they need.
FAST_EXIT = frozenset({"sync"})


def _command_name(argv: list[str]) -> str | None:
    # The only top-level option takes no value, so the first other word names the command.
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` names (default: this process's arguments); its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    # Only the named command's module is loaded (a one-shot `inference-agent sync` pays no
    # other imports).
    named = _command_name(argv)
    args = build_parser([named] if named in COMMANDS else COMMANDS).parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"inference-agent {args.command}: not available in this build ({args._missing})", file=sys.stderr)
        return 2
    return int(args._run(args) or 0)


def entry() -> NoReturn:
    """Entry point of the `inference-agent` console script and of `python -m agent`."""
    argv = sys.argv[1:]
    code = main(argv)
    if _command_name(argv) in FAST_EXIT:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe: as the interpreter's own exit would
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()

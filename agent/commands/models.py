"""`inference-agent models install-builtin DIR`: write the built-in models in TF Serving layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `inference-agent models`."""
    sub = parser.add_subparsers(dest="models_command", required=True)
    install = sub.add_parser(
        "install-builtin",
        help="write the built-in models (half_plus_two, resnet, digits) as DIR/<name>/1/model.onnx",
        description="Write the built-in models in TF Serving layout; existing versions are left alone.",
    )
    install.add_argument("dir", type=Path, help="models root, e.g. <data-dir>/models")
    install.add_argument("--name", action="append", dest="names", help="only this model (repeatable)")
    from agent.commands import push as push_cli

    push = sub.add_parser("push", help="upload a model directory as a new version to the model store",
                          description=push_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    push_cli.add_arguments(push)


def run(args: argparse.Namespace) -> int:
    """Run `models install-builtin` or `models push`."""
    if args.models_command == "push":
        from agent.commands import push as push_cli

        return push_cli.run(args)
    import agent.log
    from agent.serving.builtin_models import install_builtin

    agent.log.setup()
    try:
        paths = install_builtin(args.dir, args.names)
    except (ValueError, OSError) as e:
        agent.log.get(__name__).error("install-builtin failed", error=str(e))
        return 1
    for path in paths:
        print(path)
    return 0

"""`inference-agent run`: the node agent daemon."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

from agent.commands.common import add_data_dir, add_logging, paths_from, setup_logging
from agent.metadata import DEFAULT_SOURCE as DEFAULT_METADATA


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `run`."""
    parser.add_argument(
        "--metadata", default=DEFAULT_METADATA,
        help="metadata source: a YAML/JSON file, http://metad[,http://metad2], or etcd://host:port[,host:port]/prefix "
             f"(default: {DEFAULT_METADATA})",
    )
    add_data_dir(parser)
    parser.add_argument("--no-console", action="store_true", help="do not serve the web console")
    parser.add_argument("--metadata-local-addr", help="metad: source address to connect from (selects this node's /self)")
    parser.add_argument("--etcd-user", help="etcd: user name (or $INFERENCE_AGENT_ETCD_USER)")
    parser.add_argument("--etcd-password-file", help="etcd: file holding the password (or $INFERENCE_AGENT_ETCD_PASSWORD; kept out of argv and logs)")
    parser.add_argument("--etcd-ca-file", help="etcd: CA bundle for TLS (etcds://)")
    parser.add_argument("--etcd-cert-file", help="etcd: client certificate for TLS")
    parser.add_argument("--etcd-key-file", help="etcd: client key for TLS")
    add_logging(parser)


ETCD_USER_ENV = "INFERENCE_AGENT_ETCD_USER"
ETCD_PASSWORD_ENV = "INFERENCE_AGENT_ETCD_PASSWORD"


def source_options(args: argparse.Namespace) -> dict:
    """Keyword options for the metadata source that --metadata names."""
    if args.metadata.startswith(("http://", "https://")):
        return {"local_addr": args.metadata_local_addr} if args.metadata_local_addr else {}
    if args.metadata.startswith(("etcd://", "etcds://")):
        # Credentials from a file or the environment (a systemd EnvironmentFile), never
        # the command line where `ps` shows them.
        options = {"username": args.etcd_user or os.environ.get(ETCD_USER_ENV), "ca_file": args.etcd_ca_file,
                   "cert_file": args.etcd_cert_file, "key_file": args.etcd_key_file}
        if args.etcd_password_file:
            with open(args.etcd_password_file, encoding="utf-8") as f:
                options["password"] = f.read().strip()
        elif os.environ.get(ETCD_PASSWORD_ENV):
            options["password"] = os.environ[ETCD_PASSWORD_ENV]
        return {k: v for k, v in options.items() if v}
    return {}


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


def raise_nofile_limit(wanted: int) -> tuple[int, int]:
    """Raise this process's soft open-files limit towards `wanted` (capped by the hard
    limit); its children inherit it. Returns (soft, hard) in force."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft, hard


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM."""
    from agent import limits
    from agent.daemon import Agent
    from agent.externals import report_missing_externals
    from agent.metadata import open_source
    from agent.processes.systemd import systemd_mode

    paths = paths_from(args)
    paths.ensure()
    setup_logging(args, paths)
    report_missing_externals()
    if not systemd_mode():  # under systemd, LimitNOFILE in the units does it
        raise_nofile_limit(limits.NOFILE)
    agent = Agent(paths, open_source(args.metadata, **source_options(args)), console=not args.no_console)
    asyncio.run(serve_until_signalled(agent.run()))
    return 0

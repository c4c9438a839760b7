"""`inference-agent up`: a local cluster on embedded defaults (the README's main command).

With no argument it runs one serving node on 127.0.0.1 from the shipped single-node
metadata, with the built-in models, everything under ./inference-data. With
`--nodes N` it runs N serving nodes on 127.0.0.1..N, each with its own agent, Envoy and
model server, and its own metadata file and data directory under ./inference-data/nodeK.
With `--repo` it adds a model_repo node on 127.0.0.(N+1) (./inference-data/repo) running
MinIO, or the local S3 stand-in where MinIO is not installed, and the serving nodes sync
their models from it.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
from pathlib import Path

import yaml

from agent import PROJECT_ROOT
from agent.commands.common import add_logging, setup_logging
from agent.paths import Paths
from agent.ports import CONSOLE_PORT, MINIO_PORT

SINGLE_NODE_EXAMPLE = PROJECT_ROOT / "examples" / "single-node.yaml"
DEFAULT_DATA_DIR = "inference-data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `up`."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"data directory (default: ./{DEFAULT_DATA_DIR})")
    parser.add_argument("--nodes", type=int, default=1, choices=range(1, 65), metavar="N",
                        help="number of local serving nodes, on 127.0.0.1..N (default: 1)")
    parser.add_argument("--first-ip", default="127.0.0.1", type=_loopback,
                        help="with --repo: address of the first node; the others follow it (default: 127.0.0.1)")
    parser.add_argument("--repo", action="store_true",
                        help="add a model_repo node running MinIO (or, where MinIO is not installed, the local S3 "
                             "stand-in) after the N serving nodes; the serving nodes sync their models from it")
    parser.add_argument(
        "--metadata",
        help="metadata file of a single node (default: a copy of examples/single-node.yaml in the data "
             "directory, which you can edit while the node runs)",
    )
    add_logging(parser)


def _loopback(text: str) -> str:
    import ipaddress

    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 address") from None
    if not ip.is_loopback:
        raise argparse.ArgumentTypeError(f"{text} is not a loopback address (127.0.0.0/8): local nodes run on loopback")
    return str(ip)


def cluster_trees(ips: list[str], repo_ip: str | None = None, **env: str) -> list[dict]:
    """The /self view of each node of a cluster of serving nodes at `ips` (node k is
    i-localKK), built from the single-node example, with env overrides; with `repo_ip`,
    plus a model_repo node there (i-localrepo), whose view comes last."""
    base = yaml.safe_load(SINGLE_NODE_EXAMPLE.read_text())
    base["env"].update(env)
    template = base["hosts"]["model_serving"].popitem()[1]
    hosts = {}
    for k, ip in enumerate(ips, start=1):
        node = copy.deepcopy(template)
        node.update(ip=ip, instance_id=f"i-local{k:02d}", node_id=f"cln-local{k:02d}", sid=str(k))
        hosts[node["instance_id"]] = node
    repo = {}
    if repo_ip is not None:
        node = dict(copy.deepcopy(template), ip=repo_ip, instance_id="i-localrepo", node_id="cln-localrepo",
                    role="model_repo", sid=str(len(ips) + 1))
        repo[node["instance_id"]] = node
    trees = []
    for node in [*hosts.values(), *repo.values()]:
        tree = copy.deepcopy(base)
        tree["host"] = dict(node, hostname=node["instance_id"])
        tree["hosts"]["model_serving"] = copy.deepcopy(hosts)
        if repo:
            tree["hosts"]["model_repo"] = copy.deepcopy(repo)
        trees.append(tree)
    return trees


def local_node(paths: Paths, tree: dict | None, metadata: str | None = None, builtin: bool = True) -> Path:
    """Prepare a local node (agent/nodeops/prepare.py) with the built-in models (unless
    `builtin` is false: a serving node that syncs them from the repository) and write its
    metadata file (kept if it exists: it is the operator's to edit); return the metadata
    path."""
    from agent.nodeops.prepare import prepare_node

    prepare_node(paths, builtin_models=builtin)
    if metadata:
        return Path(metadata).resolve()
    live = paths.data_dir / "metadata.yaml"
    if not live.exists():
        live.write_text(
            SINGLE_NODE_EXAMPLE.read_text() if tree is None
            else "# This node's /self metadata view: edit it while the node runs.\n" + yaml.safe_dump(tree, sort_keys=False)
        )
    return live


def public_ports(metadata: Path) -> tuple[int, int]:
    """The node's http.port and grpc.port as its metadata file sets them (the schema's
    defaults where it does not, or sets them wrongly: the agent then says why)."""
    from agent.metadata.file import load_tree_file
    from agent.params import parameter_specs

    defaults = {s["key"]: s.get("default") for s in parameter_specs()}
    env = load_tree_file(metadata).get("env") or {}
    ports = []
    for key in ("http.port", "grpc.port"):
        try:
            ports.append(int(env.get(key, defaults[key])))
        except (TypeError, ValueError):
            ports.append(int(defaults[key]))
    return ports[0], ports[1]


async def run_nodes(nodes: list[tuple[Paths, Path]]) -> None:
    """Run one agent per node until cancelled; cancelling stops them all."""
    from agent.daemon import Agent
    from agent.metadata.file import FileSource

    async with asyncio.TaskGroup() as tg:
        for paths, metadata in nodes:
            tg.create_task(Agent(paths, FileSource(metadata)).run(), name=f"agent-{paths.data_dir.name}")


def run(args: argparse.Namespace) -> int:
    """Prepare and run the local cluster until Ctrl-C."""
    from agent.commands.run import serve_until_signalled
    from agent.metadata.file import load_tree_file

    root = Paths(Path(args.data_dir).resolve())
    setup_logging(args, root)
    if args.repo:
        return run_with_repo(args, root)
    if args.nodes == 1:
        nodes = [(root, local_node(root, None, args.metadata))]
    else:
        nodes = []
        ips = [f"127.0.0.{k}" for k in range(1, args.nodes + 1)]
        for k, tree in enumerate(cluster_trees(ips), start=1):
            paths = Paths(root.data_dir / f"node{k}")
            nodes.append((paths, local_node(paths, tree)))
    ips = [load_tree_file(m).get("host", {}).get("ip", "?") for _, m in nodes]
    http_port, grpc_port = public_ports(nodes[0][1])
    _print_banner(f"Inference Engine: {len(nodes)} serving node(s) on {', '.join(ips)}; data in {root.data_dir}",
                  ips[0], http_port, [f"  gRPC:    {ips[0]}:{grpc_port} (tensorflow.serving.PredictionService)"], "", nodes)
    asyncio.run(serve_until_signalled(run_nodes(nodes)))
    return 0


def _print_banner(head: str, ip: str, http_port: int, middle: list[str], console_note: str, nodes) -> None:
    """The start-up banner: how to call the cluster, where its console and metadata files are."""
    print("\n".join([
        head,
        f"  REST:    curl -d '{{\"instances\": [1.0, 2.0, 5.0]}}' -X POST http://{ip}:{http_port}/v1/models/half_plus_two:predict",
        *middle,
        f"  console: http://{ip}:{CONSOLE_PORT}/{console_note}",
        f"  metadata: {', '.join(str(m) for _, m in nodes)} (edit to change a node live)",
        "Ctrl-C stops every node.",
    ]), file=sys.stderr)


REPO_SYNC_INTERVAL = "5"  # seconds: a pushed model reaches the serving nodes quickly


def minio_or_standin(bin_dir: Path) -> str | None:
    """Make sure a `minio` runs for the repo node: MinIO where installed (returns None),
    else the local S3 stand-in put on PATH through `bin_dir/minio` (returns a banner
    line). SystemExit with the fix when neither can run."""
    import importlib.util
    import os
    import shlex
    import shutil

    if shutil.which("minio"):
        return None
    from agent.minio_standin import MISSING_MOTO

    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("werkzeug") is None:
        raise SystemExit(f"inference-agent up --repo: MinIO is not installed, and {MISSING_MOTO}")
    bin_dir.mkdir(parents=True, exist_ok=True)
    launcher = bin_dir / "minio"
    launcher.write_text("#!/bin/sh\n# The local S3 stand-in for MinIO (agent/minio_standin.py), not MinIO.\n"
                        f"exec {shlex.quote(sys.executable)} -m agent.minio_standin \"$@\"\n")
    launcher.chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return "MinIO is not installed: the repository runs the local S3 stand-in (moto; not MinIO, data kept in memory and mirrored to disk)"


def repo_credentials(metadata: Path) -> dict[str, str]:
    """The repository's keys: those of an earlier run (kept in its metadata), else new
    random ones (no default key is shipped)."""
    import secrets

    from agent.metadata.file import load_tree_file

    if metadata.exists():
        env = load_tree_file(metadata).get("env", {})
        if env.get("s3.access.key") and env.get("s3.secret.key"):
            return {"s3.access.key": str(env["s3.access.key"]), "s3.secret.key": str(env["s3.secret.key"])}
    return {"s3.access.key": f"local-{secrets.token_hex(4)}", "s3.secret.key": secrets.token_urlsafe(24)}


def run_with_repo(args: argparse.Namespace, root: Paths) -> int:
    """`up --nodes N --repo`: N serving nodes syncing from one model_repo node."""
    from agent.commands.run import serve_until_signalled

    standin = minio_or_standin(root.data_dir / "bin")
    import ipaddress

    first = ipaddress.IPv4Address(args.first_ip)
    if not (first + args.nodes).is_loopback:
        raise SystemExit(f"inference-agent up: {args.nodes + 1} nodes from {first} leave 127.0.0.0/8")
    ips = [str(first + k) for k in range(args.nodes)]
    repo_ip = str(first + args.nodes)
    repo_paths = Paths(root.data_dir / "repo")
    env = {"s3.type": "minio", "model.sync.interval": REPO_SYNC_INTERVAL,
           **repo_credentials(repo_paths.data_dir / "metadata.yaml")}
    trees = cluster_trees(ips, repo_ip, **env)
    nodes = [(Paths(root.data_dir / f"node{k}"), local_node(Paths(root.data_dir / f"node{k}"), tree, builtin=False))
             for k, tree in enumerate(trees[:-1], start=1)]
    # The repo node stages the built-in models; the agent seeds the bucket with them once.
    nodes.append((repo_paths, local_node(repo_paths, trees[-1])))
    endpoint = f"http://{repo_ip}:{MINIO_PORT}"
    http_port, _ = public_ports(nodes[0][1])
    head = (f"Inference Engine: {len(ips)} serving node(s) on {', '.join(ips)}, model repository on "
            f"{repo_ip}:{MINIO_PORT}; data in {root.data_dir}" + (f"\n  {standin}" if standin else ""))
    models = [f"  models:  s3://models/<name>/<version>/... at {endpoint} (path-style), access key "
              f"{env['s3.access.key']}, secret key in {repo_paths.data_dir / 'metadata.yaml'}",
              "           upload a model there, then set model.name in every node's metadata"]
    _print_banner(head, ips[0], http_port, models, f" (repository node: http://{repo_ip}:{CONSOLE_PORT}/)", nodes)
    asyncio.run(serve_until_signalled(run_nodes(nodes)))
    return 0

"""`inference-agent up`: a local cluster on embedded defaults (the README's main command).

With no argument it runs one serving node on 127.0.0.1 from the shipped single-node
metadata, with the built-in models, everything under ./inference-data. With
`--nodes N` it runs N serving nodes on 127.0.0.1..N, each with its own agent, Envoy and
model server, and its own metadata file and data directory under ./inference-data/nodeK.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
from pathlib import Path

import yaml

from agent import PROJECT_ROOT
from agent.commands_cli.common import add_logging, setup_logging
from agent.paths import Paths

SINGLE_NODE_EXAMPLE = PROJECT_ROOT / "examples" / "single-node.yaml"
DEFAULT_DATA_DIR = "inference-data"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `up`."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help=f"data directory (default: ./{DEFAULT_DATA_DIR})")
    parser.add_argument("--nodes", type=int, default=1, choices=range(1, 65), metavar="N",
                        help="number of local serving nodes, on 127.0.0.1..N (default: 1)")
    parser.add_argument(
        "--metadata",
        help="metadata file of a single node (default: a copy of examples/single-node.yaml in the data "
             "directory, which you can edit while the node runs)",
    )
    add_logging(parser)


def cluster_trees(ips: list[str], **env: str) -> list[dict]:
    """The /self view of each node of a cluster of serving nodes at `ips` (node k is
    i-localKK), built from the single-node example, with env overrides."""
    base = yaml.safe_load(SINGLE_NODE_EXAMPLE.read_text())
    base["env"].update(env)
    template = base["hosts"]["model_serving"].popitem()[1]
    hosts = {}
    for k, ip in enumerate(ips, start=1):
        node = copy.deepcopy(template)
        node.update(ip=ip, instance_id=f"i-local{k:02d}", node_id=f"cln-local{k:02d}", sid=str(k))
        hosts[node["instance_id"]] = node
    trees = []
    for node in hosts.values():
        tree = copy.deepcopy(base)
        tree["host"] = dict(node, hostname=node["instance_id"])
        tree["hosts"]["model_serving"] = copy.deepcopy(hosts)
        trees.append(tree)
    return trees


def prepare_node(paths: Paths, tree: dict | None, metadata: str | None = None) -> Path:
    """Create a node's data directory with the built-in models and its metadata file
    (kept if it exists: it is the operator's to edit); return the metadata path."""
    from agent.serving.builtin_models import install_builtin

    paths.ensure()
    install_builtin(paths.models)
    if metadata:
        return Path(metadata).resolve()
    live = paths.data_dir / "metadata.yaml"
    if not live.exists():
        live.write_text(
            SINGLE_NODE_EXAMPLE.read_text() if tree is None
            else "# This node's /self metadata view: edit it while the node runs.\n" + yaml.safe_dump(tree, sort_keys=False)
        )
    return live


async def run_nodes(nodes: list[tuple[Paths, Path]]) -> None:
    """Run one agent per node until cancelled; cancelling stops them all."""
    from agent.daemon import Agent
    from agent.metadata.file import FileSource

    async with asyncio.TaskGroup() as tg:
        for paths, metadata in nodes:
            tg.create_task(Agent(paths, FileSource(metadata)).run(), name=f"agent-{paths.data_dir.name}")


def run(args: argparse.Namespace) -> int:
    """Prepare and run the local cluster until Ctrl-C."""
    from agent.commands_cli.run import serve_until_signalled
    from agent.metadata.file import load_tree_file

    root = Paths(Path(args.data_dir).resolve())
    setup_logging(args, root)
    if args.nodes == 1:
        nodes = [(root, prepare_node(root, None, args.metadata))]
    else:
        nodes = []
        ips = [f"127.0.0.{k}" for k in range(1, args.nodes + 1)]
        for k, tree in enumerate(cluster_trees(ips), start=1):
            paths = Paths(root.data_dir / f"node{k}")
            nodes.append((paths, prepare_node(paths, tree)))
    ips = [load_tree_file(m).get("host", {}).get("ip", "?") for _, m in nodes]
    print(
        f"Inference Engine: {len(nodes)} serving node(s) on {', '.join(ips)}; data in {root.data_dir}\n"
        f"  REST:    curl -d '{{\"instances\": [1.0, 2.0, 5.0]}}' -X POST http://{ips[0]}:8080/v1/models/half_plus_two:predict\n"
        f"  gRPC:    {ips[0]}:8081 (tensorflow.serving.PredictionService)\n"
        f"  console: http://{ips[0]}:8090/\n"
        f"  metadata: {', '.join(str(m) for _, m in nodes)} (edit to change a node live)\n"
        "Ctrl-C stops every node.",
        file=sys.stderr,
    )
    asyncio.run(serve_until_signalled(run_nodes(nodes)))
    return 0

"""Metadata trees for the foundation tests (the same shape as examples/single-node.yaml)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from agent import PROJECT_ROOT

EXAMPLE = PROJECT_ROOT / "examples" / "single-node.yaml"


def single_node_tree(ip: str = "127.0.0.1", **env: str) -> dict:
    """The shipped single-node tree, moved to `ip`, with env overrides."""
    tree = yaml.safe_load(EXAMPLE.read_text())
    tree["host"]["ip"] = ip
    for node in tree["hosts"]["model_serving"].values():
        node["ip"] = ip
    tree["env"].update(env)
    return tree


def add_serving_node(tree: dict, instance_id: str, ip: str, sid: int) -> dict:
    """A copy of `tree` with one more serving node."""
    tree = copy.deepcopy(tree)
    tree["hosts"]["model_serving"][instance_id] = {
        "ip": ip, "instance_id": instance_id, "role": "model_serving", "sid": str(sid),
    }
    return tree


def write_tree(path: Path, tree: dict) -> None:
    """Replace a metadata file atomically, as an operator's editor or config tool would."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(tree))
    tmp.replace(path)

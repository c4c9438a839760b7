"""Write the platform's app files from the project's own definitions:

- platform/config.json: the creation form, its `env` section from config_schema.json;
- platform/cluster.json.mustache: the nodes, their services wired to hooks/ (with the
  hooks' own timeouts plus a margin), health check and monitor (items from agent/nodeops/monitor.py).

    python platform/generate.py           # rewrite both files
    python platform/generate.py --check   # exit 1 if either is out of date

The locale files (platform/locale/*.json) are written by hand.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from agent import PROJECT_ROOT, __version__
from agent.commands.hook import HOOKS
from agent.nodeops.monitor import cluster_json_section
from agent.params import parameter_specs

HERE = PROJECT_ROOT / "platform"
INSTALL_PREFIX = "/opt/inference-agent"
HOOKS_DIR = f"{INSTALL_PREFIX}/hooks"
# The platform kills a service at its timeout; the hook gives up on its own first.
TIMEOUT_MARGIN = 30
IMAGE = {"type": "kvm", "image": "img-inference-engine", "zone": "pek3"}
ROLES = {
    "model_serving": {
        "label": "Model serving nodes",
        "description": "Nodes running Envoy and the model server; clients call any node.",
        "count": {"default": 2, "min": 1, "max": 200},
        "cpu": 4, "memory": 8192, "volume": 30,
    },
    "model_repo": {
        "label": "Model repository node",
        "description": "Optional node running MinIO, the S3-compatible model store (s3.type minio).",
        "count": {"default": 0, "range": [0, 1]},
        "cpu": 2, "memory": 4096, "volume": 100,
    },
}


def _m(name: str) -> str:
    """A mustache placeholder, written unquoted into the JSON text."""
    return f"@@{name}@@"


def config_json() -> dict:
    """config.json: cluster properties and every parameter of config_schema.json."""
    cluster = [
        {"key": "name", "label": "Name", "description": "The name of the cluster",
         "type": "string", "default": "Inference Engine", "required": "no"},
        {"key": "description", "label": "Description", "description": "The description of the cluster",
         "type": "string", "default": "", "required": "no"},
        {"key": "vxnet", "label": "VxNet", "description": "The vxnet the cluster joins",
         "type": "string", "default": "", "required": "yes"},
    ]
    for role, spec in ROLES.items():
        count = {"key": "count", "label": "Count", "description": "Number of nodes", "type": "integer",
                 "default": spec["count"]["default"], "required": "yes"}
        count.update({k: v for k, v in spec["count"].items() if k != "default"})
        cluster.append({
            "key": role, "label": spec["label"], "description": spec["description"], "type": "array",
            "properties": [
                {"key": "cpu", "label": "CPU", "description": "CPUs of each node", "type": "integer",
                 "default": spec["cpu"], "range": [1, 2, 4, 8, 16, 32], "required": "yes"},
                {"key": "memory", "label": "Memory", "description": "Memory of each node (MiB)", "type": "integer",
                 "default": spec["memory"], "range": [2048, 4096, 8192, 16384, 32768, 65536], "required": "yes"},
                {"key": "instance_class", "label": "Instance Class", "description": "Type of each node",
                 "type": "integer", "default": 0, "range": [0, 1], "required": "yes"},
                count,
                {"key": "volume_size", "label": "Volume Size", "description": "Data volume of each node (GiB)",
                 "type": "integer", "default": spec["volume"], "min": 10, "max": 2000, "step": 10, "required": "yes"},
            ],
        })
    env = []
    for p in parameter_specs():
        item = {"key": p["key"], "label": p["label"], "description": p["description"], "type": p["type"],
                "default": p.get("default", ""), "required": "yes" if p.get("required") else "no",
                "changeable": p.get("changeable", True)}
        for k in ("range", "min", "max", "pattern"):
            if k in p:
                item[k] = p[k]
        env.append(item)
    return {"type": "array", "properties": [
        # The version the app files were made for: the image's inference-agent --version.
        {"key": "cluster", "description": f"Inference Engine {__version__} cluster properties", "type": "array",
         "properties": cluster},
        {"key": "env", "description": "Inference Engine parameters", "type": "array", "properties": env},
    ]}


def _service(hook: str, **extra) -> dict:
    return {"cmd": f"{HOOKS_DIR}/{hook}", "timeout": int(HOOKS[hook][1]) + TIMEOUT_MARGIN, **extra}


def _node(role: str) -> dict:
    services = {
        "init": _service("init"),
        "start": _service("start", order=0 if role == "model_repo" else 1),
        "stop": _service("stop", order=1 if role == "model_repo" else 0),
        "restart": _service("restart"),
        "scale_out": _service("scale-out"),
        "scale_in": _service("scale-in", pre_check=f"{HOOKS_DIR}/scale-in-check"),
        "upgrade": _service("upgrade"),
    }
    node = {
        "role": role,
        "container": IMAGE,
        "instance_class": _m(f"cluster.{role}.instance_class"),
        "count": _m(f"cluster.{role}.count"),
        "cpu": _m(f"cluster.{role}.cpu"),
        "memory": _m(f"cluster.{role}.memory"),
        "volume": {"size": _m(f"cluster.{role}.volume_size"), "mount_point": "/data",
                   "mount_options": "defaults,noatime", "filesystem": "ext4"},
        # One node at a time: the others carry the traffic while it restarts.
        "vertical_scaling_policy": "sequential",
        "user_access": False,
        "services": services,
        "health_check": {
            "enable": True, "interval_sec": 60,
            "timeout_sec": int(HOOKS["health-check"][1]) + 2,
            "action_timeout_sec": int(HOOKS["health-action"][1]) + 10,
            "healthy_threshold": 2, "unhealthy_threshold": 3,
            "check_cmd": f"{HOOKS_DIR}/health-check", "action_cmd": f"{HOOKS_DIR}/health-action",
        },
        "monitor": cluster_json_section(f"{HOOKS_DIR}/monitor"),
    }
    if role == "model_serving":
        # Only serving nodes are added and removed; the model_repo node is 0 or 1 from the start.
        node["advanced_actions"] = ["scale_horizontal"]
    return node


def cluster_json_mustache() -> str:
    """cluster.json.mustache's text."""
    doc = {
        "name": _m("cluster.name"),
        "description": _m("cluster.description"),
        "vxnet": _m("cluster.vxnet"),
        "upgrade_policy": [],
        "nodes": [_node(role) for role in ROLES],
        "env": {p["key"]: _m(f"env.{p['key']}") for p in parameter_specs()},
        "endpoints": {
            "http": {"port": "env.http.port", "protocol": "http"},
            "grpc": {"port": "env.grpc.port", "protocol": "tcp"},
            "console": {"port": 8090, "protocol": "http"},
        },
    }
    text = json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    return re.sub(r'"@@([^@"]+)@@"', r"{{\1}}", text)


def outputs() -> dict[Path, str]:
    """Every generated file with its content."""
    return {
        HERE / "config.json": json.dumps(config_json(), indent=2, ensure_ascii=False) + "\n",
        HERE / "cluster.json.mustache": cluster_json_mustache(),
    }


def main(argv: list[str] | None = None) -> int:
    """Write the files, or with --check report the stale ones."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a generated file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, content in outputs().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == content:
            continue
        if args.check:
            stale.append(path)
        else:
            path.write_text(content, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"out of date: {path} (run python platform/generate.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())

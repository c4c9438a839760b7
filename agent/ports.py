"""Every fixed port of a node, and the kinds of its public listeners: one home.

`config_schema.json` lists the same ports under `reserved_ports` (what `http.port` and
`grpc.port` may not take); a test keeps the two equal."""

from __future__ import annotations

import ipaddress

# TF Serving's fixed ports: Envoy's upstreams on every serving node.
SERVING_GRPC_PORT = 8500
SERVING_REST_PORT = 8501
# Envoy's health-check listener: every Envoy checks a serving node through it (drain).
HEALTH_PORT = 8502
ENVOY_ADMIN_PORT = 8001
CONSOLE_PORT = 8090
MINIO_PORT = 9000

# Every fixed port, as config_schema.json's `reserved_ports` names them.
FIXED_PORTS: dict[int, str] = {
    SERVING_GRPC_PORT: "the model server's gRPC port",
    SERVING_REST_PORT: "the model server's REST port",
    HEALTH_PORT: "Envoy's health-check listener",
    ENVOY_ADMIN_PORT: "Envoy's admin port",
    CONSOLE_PORT: "the web console",
    MINIO_PORT: "MinIO on the model_repo node",
}

# The public listeners: kind -> the model server port behind it. A kind names the
# listener (`<kind>_<port>`), its stat prefix (`http.<kind>.`) and its serving cluster
# (`serving_<kind>`).
LISTENER_KINDS: dict[str, int] = {"rest": SERVING_REST_PORT, "grpc": SERVING_GRPC_PORT}


def serving_cluster(kind: str) -> str:
    """The Envoy cluster of every node's model server behind the `kind` listener."""
    return f"serving_{kind}"


SERVING_CLUSTERS: tuple[str, ...] = tuple(serving_cluster(k) for k in LISTENER_KINDS)


def envoy_admin_address(node_ip: str) -> str:
    """Envoy admin listens on loopback only: on 127.0.0.1, or on the node's own address
    when that is itself a loopback address (several local nodes on one machine)."""
    return node_ip if ipaddress.ip_address(node_ip).is_loopback else "127.0.0.1"


def envoy_admin_url(node_ip: str) -> str:
    """Base URL of the Envoy admin API of the node at `node_ip`."""
    return f"http://{envoy_admin_address(node_ip)}:{ENVOY_ADMIN_PORT}"


def model_server_url(node_ip: str) -> str:
    """Base URL of the REST API of the model server of the node at `node_ip`."""
    return f"http://{node_ip}:{SERVING_REST_PORT}"

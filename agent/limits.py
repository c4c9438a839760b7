"""Every bound the node puts on what the network may ask of it, in one place: the model
server's request limits (checked in agent/serving/limits.py), Envoy's (rendered into its
listeners and clusters) and the console's (agent/console). Each value is named here with
the error a client gets past it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

MIB = 1 << 20

# --- Model server (REST 8501, gRPC 8500) -------------------------------------------
# A ResNet batch of 32 pictures as JSON floats is ~50 MB; anything larger is refused
# before it is read (aiohttp buffers the whole body and parsing amplifies it ~10x).
MAX_REST_BODY_BYTES = 64 * MIB  # HTTP 413 {"error": ...}
MAX_GRPC_MESSAGE_BYTES = 64 * MIB  # gRPC RESOURCE_EXHAUSTED (gRPC's own check)
# JSON nesting: orjson >= 3.9.15 refuses more than 1024 levels (HTTP 400); tensor
# values are walked only up to MAX_TENSOR_RANK.
JSON_MAX_DEPTH = 1024
# TensorFlow allows rank 254; no served model takes more than a handful of dimensions.
MAX_TENSOR_RANK = 32  # 400 / INVALID_ARGUMENT
MAX_TENSOR_ELEMENTS = 1 << 24  # per input, declared or sent: 400 / INVALID_ARGUMENT
# A TensorProto may declare more elements than it carries (TensorFlow pads with the
# last value); the padding the server allocates for that is bounded.
MAX_FILL_BYTES = 4 * MIB  # 400 / INVALID_ARGUMENT
MAX_INPUTS = 64  # 400 / INVALID_ARGUMENT
MAX_IMAGE_PIXELS = 4096 * 4096  # per encoded picture, from its header: 400 / INVALID_ARGUMENT
# Inference requests in progress per model server (REST and gRPC together); past it a
# request is refused at once with HTTP 503 / gRPC UNAVAILABLE, which Envoy retries on
# another node, instead of queueing without bound.
MAX_CONCURRENT_REQUESTS = 64
# A REST body must arrive within this many seconds (HTTP 408): a slow upload cannot hold
# one of the slots above for long.
REST_BODY_TIMEOUT = 60.0
# gRPC calls in progress of any kind (messages being received included); past it gRPC
# answers RESOURCE_EXHAUSTED. Bounds the memory of messages being received.
MAX_GRPC_RPCS = 4 * MAX_CONCURRENT_REQUESTS


# --- Envoy's public listeners (http.port, grpc.port) --------------------------------
@dataclass(frozen=True)
class EnvoyLimits:
    """Envoy's bounds on public traffic (rendered into lds.yaml and cds.yaml)."""

    # Envoy's buffer filter answers 413 past this; a little above the model server's
    # limit so that the server's own, more precise answer is the one clients see.
    max_request_bytes: int = MAX_REST_BODY_BYTES + MIB
    per_connection_buffer_limit_bytes: int = 1 * MIB
    max_request_headers_kb: int = 32  # 431 past it
    max_headers_count: int = 64  # 431 past it
    request_headers_timeout: str = "10s"  # a client that never finishes its headers: 408
    stream_idle_timeout: str = "60s"
    idle_timeout: str = "300s"  # idle keep-alive connections closed
    max_concurrent_streams: int = 128  # per HTTP/2 connection
    # Per cluster (all nodes): past them Envoy answers 503 / UNAVAILABLE at once.
    max_connections: int = 4096
    max_pending_requests: int = 4096
    max_requests: int = 4096

    def as_dict(self) -> dict:
        """The values by name, for the templates."""
        return asdict(self)


ENVOY = EnvoyLimits()

# --- Open files ----------------------------------------------------------------------
# LimitNOFILE of every unit in systemd/; in local mode the agent raises its soft limit
# (inherited by Envoy and the model server it starts) to this, or to the hard limit.
NOFILE = 65536

# --- Console (8090) ------------------------------------------------------------------
CONSOLE_MAX_CONNECTIONS = 64  # past it new connections are closed at once
CONSOLE_HEADER_TIMEOUT = 10.0  # seconds to send the request headers, else closed
CONSOLE_IDLE_TIMEOUT = 30.0  # seconds an idle keep-alive connection is kept
# Failed logins per client address: each failure doubles the wait before the next
# attempt is checked (1 s, 2 s, 4 s ... up to 60 s); meanwhile the client gets 429.
LOGIN_BASE_DELAY = 1.0
LOGIN_MAX_DELAY = 60.0

# --- Logs the agent writes or owns (agent.log, Envoy's, the model server's, cmd.log) -
LOG_MAX_BYTES = 50 * MIB  # a log over this size is rotated (run --log-max-bytes)
LOG_BACKUPS = 5  # rotated files kept: name.log.1 .. name.log.5 (run --log-backups)
LOG_ROTATE_INTERVAL = 30.0  # seconds between size checks of the logs other processes write
# Repeated warnings/errors of one kind: at most this many lines per window, then one
# line saying how many were suppressed.
LOG_REPEAT_BURST = 10
LOG_REPEAT_WINDOW = 60.0

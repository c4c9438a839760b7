"""Where a model store lives: the typed view of the s3.* parameters and model.base.path."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Generic, Literal, TypeVar

from agent.ports import MINIO_PORT
from agent.state import ClusterState

StoreKind = Literal["minio", "ois"]


@dataclass(frozen=True)
class StoreConfig:
    """One S3-compatible model store. The secret key is kept out of repr (and so out of logs)."""

    kind: StoreKind
    endpoint_url: str
    region: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str = ""
    prefix: str = ""

    @property
    def location(self) -> str:
        """The repository root as an operator writes it, with the endpoint: no credentials."""
        root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{root} at {self.endpoint_url}"

    def model_prefix(self, model_name: str) -> str:
        """The key prefix holding `model_name`'s versions, ending in a slash."""
        return f"{self.prefix}/{model_name}/" if self.prefix else f"{model_name}/"

    def public(self) -> dict[str, str]:
        """What status and the console may show: everything but the keys."""
        return {
            "kind": self.kind,
            "endpoint": self.endpoint_url,
            "region": self.region,
            "bucket": self.bucket,
            "prefix": self.prefix,
        }


def store_config_for(state: ClusterState) -> StoreConfig | None:
    """The model store the cluster's parameters name, or None when s3.type is none."""
    p = state.params
    if p.s3_type == "none":
        return None
    if p.s3_type == "minio":
        if state.repo_node is None:  # parse_cluster_state rejects this; kept for direct callers
            raise ValueError("s3.type minio needs a model_repo node")
        endpoint = f"http://{_host(state.repo_node.ip)}:{MINIO_PORT}"
        kind: StoreKind = "minio"
    else:
        endpoint = p.s3_endpoint.rstrip("/")
        kind = "ois"
    return StoreConfig(
        kind=kind,
        endpoint_url=endpoint,
        region=p.s3_region or "us-east-1",
        access_key=p.s3_access_key,
        secret_key=p.s3_secret_key,
        bucket=p.bucket,
        prefix=p.prefix,
    )


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True)
class SyncOptions:
    """How hard a sync pushes the store. Defaults suit MinIO on a LAN and moto on loopback."""

    # The most requests for whole objects in flight. Small files are latency-bound, so
    # several; but past the store's own parallelism (one request at a time for moto, a few
    # per core for MinIO) more only burn CPU the store needs, so the sync keeps fewer when
    # the store's answers show it queueing (inflight.py).
    concurrency: int = 16
    # Ranged streams shared by the multipart objects of one sync. Each object gets
    # budget / (multipart objects), at least one, cut on part boundaries.
    multipart_streams: int = 4
    # Attempts per request inside botocore (connection errors, 5xx, throttling).
    request_attempts: int = 5
    # Attempts per object or range when the body breaks off or fails verification.
    object_attempts: int = 4
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    # How long a sync waits for another sync of the same model (daemon vs CLI) to end.
    lock_timeout: float = 30.0
    chunk_size: int = 1 << 20
    # A new or changed version is taken only once its newest object is this old (by the
    # store's clock): an upload in progress is not mistaken for a complete version.
    settle_seconds: float = 3.0


T = TypeVar("T")


class PerStore(Generic[T]):
    """One shared object (a client, a connection pool) per (store, options), the `size`
    most recently used kept; `close` is called on those dropped. `make` runs outside the
    lock (a boto3 client takes ~0.1 s); of two made at once, the first stored wins."""

    def __init__(self, make: Callable[[StoreConfig, SyncOptions], T], size: int = 4,
                 close: Callable[[T], None] = lambda _obj: None):
        self._make = make
        self._size = size
        self._close = close
        self._items: OrderedDict[tuple[StoreConfig, SyncOptions], T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: StoreConfig, options: SyncOptions) -> T:
        """The shared object for `store` and `options`, made on first use."""
        key = (store, options)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        made = self._make(store, options)
        dropped = []
        with self._lock:
            found = self._items.setdefault(key, made)
            self._items.move_to_end(key)
            if found is not made:
                dropped.append(made)
            while len(self._items) > self._size:
                dropped.append(self._items.popitem(last=False)[1])
        for obj in dropped:
            self._close(obj)
        return found

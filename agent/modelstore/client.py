"""boto3 clients for a model store, for what uploads (`models push`, the seed); the sync
itself talks to the store through transport.py, without boto3.

Credentials go straight from StoreConfig into the client; nothing here writes them
anywhere or puts them in a message.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from agent.modelstore.config import PerStore, StoreConfig, SyncOptions


def make_client(store: StoreConfig, options: SyncOptions) -> Any:
    """A new S3 client for `store`, sized for `options.concurrency` parallel requests."""
    config = Config(
        region_name=store.region or "us-east-1",
        signature_version="s3v4",
        max_pool_connections=options.concurrency + options.multipart_streams + 4,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        retries={"max_attempts": options.request_attempts, "mode": "standard"},
        # MinIO is addressed path-style; public stores get botocore's choice.
        s3={"addressing_style": "path" if store.kind == "minio" else "auto"},
        # Objects are verified against their ETag (MD5) while they stream in; CRC
        # checksums on top would cost CPU and are absent on most stores anyway.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        parameter_validation=False,
        tcp_keepalive=True,
    )
    session = boto3.session.Session(
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name=store.region or "us-east-1",
    )
    return session.client("s3", endpoint_url=store.endpoint_url, config=config)


_shared: PerStore[Any] = PerStore(make_client)


def client_for(store: StoreConfig, options: SyncOptions) -> Any:
    """A shared client for `store` (boto3 clients are thread-safe; building one costs ~0.1 s)."""
    return _shared.get(store, options)

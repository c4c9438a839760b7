"""boto3 clients for a model store, and errors that name the endpoint and bucket.

Credentials go straight from StoreConfig into the client; nothing here writes them
anywhere or puts them in a message.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import boto3
import botocore.exceptions as bexc
from botocore.config import Config

from agent.modelstore.config import StoreConfig, SyncOptions

_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
}
# Codes after which retrying the same request cannot help within one sync.
FINAL_CODES = _DENIED | {
    "NoSuchBucket", "NoSuchKey", "404", "PreconditionFailed", "412", "InvalidRange", "416",
    "InvalidArgument", "InvalidRequest", "NotImplemented", "400", "501",
}

_cache: OrderedDict[tuple[StoreConfig, SyncOptions], Any] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_SIZE = 4


class StoreError(Exception):
    """A model store operation failed; the message names endpoint and bucket, never a key."""


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


def client_for(store: StoreConfig, options: SyncOptions) -> Any:
    """A shared client for `store` (boto3 clients are thread-safe; building one costs ~0.1 s)."""
    key = (store, options)
    with _cache_lock:
        client = _cache.get(key)
        if client is not None:
            _cache.move_to_end(key)
            return client
    client = make_client(store, options)
    with _cache_lock:
        _cache[key] = client
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return client


def error_code(exc: BaseException) -> str:
    """The S3 error code of a ClientError (or its HTTP status), else ''."""
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return ""


def is_final(exc: BaseException) -> bool:
    """True when an error will not go away by retrying within this sync."""
    return error_code(exc) in FINAL_CODES


def describe(exc: BaseException, store: StoreConfig, what: str) -> str:
    """A one-line explanation of `exc` naming the endpoint and bucket (no secrets)."""
    where = f"bucket {store.bucket!r} at {store.endpoint_url}"
    code = error_code(exc)
    if code in _DENIED:
        text = (
            f"{what}: access denied ({code}) by {where}; "
            "check s3.access.key and s3.secret.key and the bucket's policy"
        )
    elif code in ("NoSuchBucket",):
        text = f"{what}: {where}: the bucket does not exist"
    elif isinstance(exc, bexc.ClientError):
        message = exc.response.get("Error", {}).get("Message", "")
        text = f"{what}: {where} answered {code}{': ' + message if message else ''}"
    elif isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError)):
        text = f"{what}: cannot connect to {store.endpoint_url} ({where})"
    elif isinstance(exc, bexc.BotoCoreError):
        text = f"{what}: {where}: {exc}"
    else:
        text = f"{what}: {where}: {type(exc).__name__}: {exc}"
    return scrub(text, store)


def scrub(text: str, store: StoreConfig) -> str:
    """`text` with the keys masked, in case an underlying library echoed them (a presigned
    URL in a connection error carries the access key id)."""
    for key in (store.secret_key, store.access_key):
        if len(key) >= 8 and key in text:
            text = text.replace(key, "***")
    return text

"""Errors of the model store, and messages about them that name the endpoint and bucket.

Light on purpose: the sync path never imports boto3. Errors raised by botocore (the
push and seed paths use boto3) are recognised only when botocore is already loaded.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from agent.modelstore.config import StoreConfig

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


class StoreError(Exception):
    """A model store operation failed; the message names endpoint and bucket, never a key."""


class S3Error(Exception):
    """The store answered a request with an error: its S3 code (or HTTP status) and message."""

    def __init__(self, status: int, code: str, message: str, operation: str):
        super().__init__(f"{code} {message}".strip())
        self.status = status
        self.code = code
        self.message = message
        self.operation = operation


def s3_error(status: int, body: bytes, operation: str) -> S3Error:
    """The S3Error of an error answer, from its XML body (or its status alone)."""
    text = body[:65536].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]{1,200})</Code>", text)
    message = re.search(r"<Message>([^<]{0,1000})</Message>", text)
    return S3Error(status, code.group(1) if code else str(status), message.group(1) if message else "", operation)


def _botocore() -> Any:
    """botocore.exceptions if something already loaded it (else no error can be one of its)."""
    return sys.modules.get("botocore.exceptions")


def error_code(exc: BaseException) -> str:
    """The S3 error code of an error answer (or its HTTP status), else ''."""
    if isinstance(exc, S3Error):
        return exc.code
    bexc = _botocore()
    if bexc is not None and isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return ""


def is_final(exc: BaseException) -> bool:
    """True when an error will not go away by retrying within this sync."""
    return error_code(exc) in FINAL_CODES


def unreachable(exc: BaseException) -> bool:
    """True when `exc` means the endpoint does not answer at all (no connection)."""
    import urllib3.exceptions

    if isinstance(exc, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError)):
        return True
    bexc = _botocore()
    return bexc is not None and isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectTimeoutError))


def describe(exc: BaseException, store: StoreConfig, what: str) -> str:
    """A one-line explanation of `exc` naming the endpoint and bucket (no secrets)."""
    where = f"bucket {store.bucket!r} at {store.endpoint_url}"
    code = error_code(exc)
    bexc = _botocore()
    if code in _DENIED:
        text = (
            f"{what}: access denied ({code}) by {where}; "
            "check s3.access.key and s3.secret.key and the bucket's policy"
        )
    elif code in ("NoSuchBucket",):
        text = f"{what}: {where}: the bucket does not exist"
    elif code:
        message = exc.message if isinstance(exc, S3Error) else exc.response.get("Error", {}).get("Message", "")  # type: ignore[attr-defined]
        text = f"{what}: {where} answered {code}{': ' + message if message else ''}"
    elif unreachable(exc):
        text = f"{what}: cannot connect to {store.endpoint_url} ({where})"
    elif bexc is not None and isinstance(exc, bexc.BotoCoreError):
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

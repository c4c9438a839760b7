"""Presigned GET URLs (AWS Signature V4, query string) for many keys of one bucket, cheaply.

botocore's generate_presigned_url costs about 0.8 ms a call (endpoint rules, event hooks,
a signing key derived afresh every time): more CPU than the store needs to serve a
64 KiB object. Here the URL layout (endpoint, addressing style) is learnt from one
botocore presign, and the day's signing key is derived once; each URL then costs one
SHA-256 and one HMAC. tests/test_modelstore_sync.py checks the URLs against botocore's.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

_PROBE = "inference-agent-probe"
EXPIRES = 3600
# A URL signed at most this long ago is still good for EXPIRES - this.
_RESIGN_AFTER = 600


class Presigner:
    """Presigned GET URLs for keys of `bucket`, signed as the client `client` would."""

    def __init__(self, client: Any, bucket: str):
        sample = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": _PROBE}, ExpiresIn=60)
        base = sample.split("?", 1)[0]
        if not base.endswith("/" + _PROBE):
            raise ValueError(f"unexpected presigned URL layout for bucket {bucket!r}")
        self._base = base[: -len(_PROBE)]  # ends with '/'
        parts = urlsplit(self._base)
        default_port = {"http": ":80", "https": ":443"}.get(parts.scheme, "")
        self._host = parts.netloc.removesuffix(default_port) if default_port else parts.netloc
        self._path = parts.path
        creds = client._request_signer._credentials.get_frozen_credentials()
        self._access_key = creds.access_key
        self._secret_key = creds.secret_key
        self._token = creds.token
        self._region = client.meta.region_name or "us-east-1"
        self._lock = threading.Lock()
        self._day = ""
        self._key = b""
        self._stamp = ""
        self._stamped_at = 0.0
        self._query = ""

    def _prefix(self) -> tuple[str, str, bytes, str]:
        """(amz date, credential scope, signing key, canonical query) for now."""
        now = _now()
        with self._lock:
            if now - self._stamped_at > _RESIGN_AFTER:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
                day = stamp[:8]
                if day != self._day:
                    key = _hmac(("AWS4" + self._secret_key).encode(), day)
                    for part in (self._region, "s3", "aws4_request"):
                        key = _hmac(key, part)
                    self._day, self._key = day, key
                scope = f"{day}/{self._region}/s3/aws4_request"
                params = {
                    "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                    "X-Amz-Credential": f"{self._access_key}/{scope}",
                    "X-Amz-Date": stamp,
                    "X-Amz-Expires": str(EXPIRES),
                    "X-Amz-SignedHeaders": "host",
                }
                if self._token:
                    params["X-Amz-Security-Token"] = self._token
                self._query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(params.items()))
                self._stamp, self._stamped_at = stamp, now
            return self._stamp, f"{self._day}/{self._region}/s3/aws4_request", self._key, self._query

    def url(self, key: str) -> str:
        """A presigned GET URL of `key`."""
        stamp, scope, signing_key, query = self._prefix()
        quoted = quote(key, safe="/~")
        canonical = f"GET\n{self._path}{quoted}\n{query}\nhost:{self._host}\n\nhost\nUNSIGNED-PAYLOAD"
        to_sign = f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{self._base}{quoted}?{query}&X-Amz-Signature={signature}"


def _now() -> float:
    return time.time()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _enc(value: str) -> str:
    return quote(value, safe="-_.~")

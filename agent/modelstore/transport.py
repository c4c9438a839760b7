"""Signed requests to one bucket of a model store over urllib3: what the sync sends.

No boto3 here: a CLI sync of an unchanged model is mostly start-up and one listing, and
boto3's import and client cost more than the listing's own CPU. Timeouts, TLS trust
(AWS_CA_BUNDLE, as botocore reads it) and proxies (HTTP(S)_PROXY, NO_PROXY) follow what
boto3 would do. Requests are never retried here: the caller decides (listing.py,
download.py), and a broken or refused connection surfaces as urllib3's own exception.
"""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from agent.modelstore.config import PerStore, StoreConfig, SyncOptions
from agent.modelstore.signing import Signer


@dataclass
class Response:
    """Status, lower-case headers and the streaming urllib3 body of one answer."""

    status: int
    headers: dict[str, str]
    body: Any


class Transport:
    """Signs and sends requests for keys of `store.bucket`; thread-safe, pooled."""

    def __init__(self, store: StoreConfig, options: SyncOptions):
        self.signer = Signer(store)
        timeout = urllib3.Timeout(connect=options.connect_timeout, read=options.read_timeout)
        pool_args: dict[str, Any] = {
            "num_pools": 4,
            "maxsize": options.concurrency + options.multipart_streams + 4,
            "timeout": timeout,
            "retries": False,
        }
        where = urlsplit(self.signer.base_url)
        scheme, host = where.scheme, where.hostname or ""
        if scheme == "https":
            bundle = os.environ.get("AWS_CA_BUNDLE")
            if bundle:
                pool_args["ca_certs"] = bundle
        proxy = urllib.request.getproxies().get(scheme)
        if proxy and not urllib.request.proxy_bypass(host):
            self._http: urllib3.PoolManager = urllib3.ProxyManager(proxy, **pool_args)
        else:
            self._http = urllib3.PoolManager(**pool_args)

    def request(self, key: str, params: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                method: str = "GET", amz_headers: dict[str, str] | None = None) -> Response:
        """Send one signed request; the body streams (read it, then release_conn() or close())."""
        url, signed = self.signer.sign(key, params, method, amz_headers)
        raw = self._http.urlopen(method, url, headers={**(headers or {}), **signed}, preload_content=False,
                                 redirect=False, decode_content=False)
        return Response(raw.status, {k.lower(): v for k, v in raw.headers.items()}, raw)

    def close(self) -> None:
        """Close every pooled connection."""
        self._http.clear()


_shared: PerStore[Transport] = PerStore(Transport, close=Transport.close)


def transport_for(store: StoreConfig, options: SyncOptions) -> Transport:
    """A shared Transport for `store` (the daemon's periodic syncs reuse its connections)."""
    return _shared.get(store, options)

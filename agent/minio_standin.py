"""A local S3 stand-in for MinIO, for trying a model_repo node where MinIO is not
installed (`inference-agent up --repo`) and for the tests. It is NOT MinIO.

It takes MinIO's command line and environment, `minio server --address IP:PORT DIR`
with MINIO_ROOT_USER / MINIO_ROOT_PASSWORD, and serves real S3 (path-style, moto's
implementation) plus MinIO's liveness probes (`/minio/health/live`, `/ready`). What
differs from MinIO:
- requests must carry the root access key (SigV4 header or presigned query); anonymous
  requests and other keys are refused, but signatures are not verified;
- objects live in memory and are mirrored to `DIR/.s3-standin/<bucket>/` before each
  write is acknowledged, and loaded back at start: data survives a restart or kill -9,
  but an object uploaded in parts comes back with a single-part ETag.

It needs moto (`pip install 'inference-agent[repo]'`).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote

STORE_DIR = ".s3-standin"
HEALTH_PATHS = ("/minio/health/live", "/minio/health/ready", "/minio/health/cluster")
MIN_USER_LENGTH, MIN_PASSWORD_LENGTH = 3, 8  # MinIO's own rule
# One request's body (a whole object, or one part of a multipart upload: boto3 splits
# large files into parts of 8 MiB by default); the stand-in holds objects in memory.
MAX_REQUEST_BYTES = 1 << 30
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
MISSING_MOTO = ("the local S3 stand-in for MinIO needs moto: pip install 'inference-agent[repo]' "
                "(or install MinIO's server binary as `minio` on PATH)")


def _error(start_response: Callable, status: str, code: str, message: str) -> list[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def access_key_of(environ: dict[str, Any]) -> str | None:
    """The access key a request is signed with (header or presigned query), else None."""
    from urllib.parse import parse_qs

    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match.group(1)
    credential = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
    return credential.split("/", 1)[0] or None


class Mirror:
    """The on-disk copy of every bucket and object, written before a write is acknowledged."""

    def __init__(self, root: Path, app: Callable, access_key: str):
        from werkzeug.test import Client

        self.root = root
        self.client = Client(app)
        # moto picks the S3 handler by the credential scope of the signature it is shown.
        self.headers = {"Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/20000101/us-east-1/s3/aws4_request, "
                                         "SignedHeaders=host, Signature=0"}
        self.lock = threading.Lock()

    def _bucket_dir(self, bucket: str) -> Path:
        if not _BUCKET.fullmatch(bucket):  # never a path outside the store, whatever the server took
            raise ValueError(f"bucket name {bucket!r} is not a valid S3 bucket name")
        return self.root / bucket

    def _object_path(self, bucket: str, key: str) -> Path:
        return self._bucket_dir(bucket) / hashlib.sha256(key.encode()).hexdigest()

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def load(self) -> int:
        """Put every mirrored bucket and object back into the S3 server; returns the object count."""
        count = 0
        for bucket_dir in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []:
            self.client.put(f"/{bucket_dir.name}", headers=self.headers)
            for meta in sorted(bucket_dir.glob("*.json")):
                key = json.loads(meta.read_text())["key"]
                data = meta.with_suffix("").read_bytes()
                self.client.put(f"/{bucket_dir.name}/{quote(key, safe='/~')}", data=data, headers=self.headers)
                count += 1
        return count

    def bucket_created(self, bucket: str) -> None:
        self._bucket_dir(bucket).mkdir(parents=True, exist_ok=True)

    def bucket_deleted(self, bucket: str) -> None:
        shutil.rmtree(self._bucket_dir(bucket), ignore_errors=True)

    def object_changed(self, bucket: str, key: str) -> None:
        """Copy the object as the server now has it (or its absence) to disk."""
        with self.lock:
            resp = self.client.get(f"/{bucket}/{quote(key, safe='/~')}", headers=self.headers)
            path = self._object_path(bucket, key)
            if resp.status_code == 200:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._write(path, resp.get_data())
                self._write(path.with_suffix(".json"), json.dumps({"key": key}).encode())
            elif resp.status_code == 404:
                path.with_suffix(".json").unlink(missing_ok=True)
                path.unlink(missing_ok=True)

    def bucket_changed(self, bucket: str) -> None:
        """After a multi-object delete: drop the copies of objects the server no longer has."""
        with self.lock:
            keys: set[str] = set()
            token = ""
            while True:
                query = "list-type=2" + (f"&continuation-token={quote(token, safe='')}" if token else "")
                resp = self.client.get(f"/{bucket}?{query}", headers=self.headers)
                if resp.status_code != 200:
                    return
                root = ET.fromstring(resp.get_data())
                keys |= {k.text or "" for k in root.iter(f"{_S3_NS}Key")}
                token = root.findtext(f"{_S3_NS}NextContinuationToken") or ""
                if not token:
                    break
            for meta in self._bucket_dir(bucket).glob("*.json"):
                if json.loads(meta.read_text())["key"] not in keys:
                    meta.unlink(missing_ok=True)
                    meta.with_suffix("").unlink(missing_ok=True)


class StandinApp:
    """WSGI: MinIO's health probes, the root key check, then moto's S3; writes mirrored."""

    def __init__(self, s3_app: Callable, access_key: str, mirror: Mirror):
        self.s3_app = s3_app
        self.access_key = access_key
        self.mirror = mirror

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        from werkzeug.wrappers import Request

        request = Request(environ)
        if request.path in HEALTH_PATHS:
            start_response("200 OK", [("Content-Length", "0")])
            return [b""]
        # Everything is held in memory: bound a request before reading any of it.
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            return _error(start_response, "411 Length Required", "MissingContentLength",
                          "You must provide the Content-Length HTTP header.")
        length = environ.get("CONTENT_LENGTH") or "0"
        if not length.isdigit() or int(length) > MAX_REQUEST_BYTES:
            return _error(start_response, "400 Bad Request", "EntityTooLarge",
                          f"Your proposed upload exceeds the maximum allowed object size ({MAX_REQUEST_BYTES} bytes "
                          "in the S3 stand-in; use multipart uploads or MinIO).")
        key = access_key_of(environ)
        if key is None:
            return _error(start_response, "403 Forbidden", "AccessDenied", "Access Denied.")
        if not hmac.compare_digest(key.encode(), self.access_key.encode()):
            return _error(start_response, "403 Forbidden", "InvalidAccessKeyId",
                          "The Access Key Id you provided does not exist in our records.")
        captured: dict[str, Any] = {}
        chunks: list[bytes] = []

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable[[bytes], None]:
            captured["status"], captured["headers"] = status, headers
            return chunks.append

        result = self.s3_app(environ, capture)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        if captured["status"].startswith("2"):
            self._mirror(request)
        start_response(captured["status"], captured["headers"])
        return chunks

    def _mirror(self, request: Any) -> None:
        bucket, _, key = request.path.lstrip("/").partition("/")
        if not _BUCKET.fullmatch(bucket):
            return
        args, method = request.args, request.method
        if not key:
            if method == "PUT" and not args:
                self.mirror.bucket_created(bucket)
            elif method == "DELETE" and not args:
                self.mirror.bucket_deleted(bucket)
            elif method == "POST" and "delete" in args:
                self.mirror.bucket_changed(bucket)
        elif (method == "PUT" and "uploadId" not in args) or (method == "POST" and "uploadId" in args) \
                or (method == "DELETE" and "uploadId" not in args):
            self.mirror.object_changed(bucket, key)


def parse_address(address: str) -> tuple[str, int]:
    """MinIO's --address: 'IP:PORT', '[IPv6]:PORT' or ':PORT' (every interface)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--address {address!r}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    """`minio server --address HOST:PORT DIR`, serving until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="minio", description="local S3 stand-in for MinIO (not MinIO)")
    sub = parser.add_subparsers(dest="command", required=True)
    server = sub.add_parser("server", help="serve DIR over S3")
    server.add_argument("--address", default=":9000")
    server.add_argument("--console-address", default="", help="accepted and ignored: no web console")
    server.add_argument("--quiet", action="store_true")
    server.add_argument("dirs", nargs="+", metavar="DIR")
    args = parser.parse_args(argv)
    user, password = os.environ.get("MINIO_ROOT_USER", ""), os.environ.get("MINIO_ROOT_PASSWORD", "")
    if len(user) < MIN_USER_LENGTH or len(password) < MIN_PASSWORD_LENGTH:
        print(f"minio (S3 stand-in): MINIO_ROOT_USER (at least {MIN_USER_LENGTH} characters) and "
              f"MINIO_ROOT_PASSWORD (at least {MIN_PASSWORD_LENGTH}) must be set", file=sys.stderr)
        return 1
    try:
        host, port = parse_address(args.address)
    except ValueError as e:
        print(f"minio (S3 stand-in): {e}", file=sys.stderr)
        return 2
    try:
        from moto.moto_server.werkzeug_app import create_backend_app
        from werkzeug.serving import make_server
    except ImportError:
        print(f"minio: {MISSING_MOTO}", file=sys.stderr)
        return 2
    data = Path(args.dirs[0])
    store = data / STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    s3_app = create_backend_app("s3")
    mirror = Mirror(store, s3_app, user)
    loaded = mirror.load()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    httpd = make_server(host, port, StandinApp(s3_app, user, mirror), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"S3 stand-in for MinIO (moto, not MinIO) on {args.address}, data in {data} "
          f"({loaded} object(s) loaded)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

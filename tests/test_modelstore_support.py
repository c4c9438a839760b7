"""Shared pieces of the model store tests: a real moto S3 server on loopback, a plain
boto3 client to play the operator uploading models, and model trees to upload.

Imported by the tests/test_modelstore_*.py modules; it holds no tests itself.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from agent.modelstore import StoreConfig, SyncOptions

MiB = 1 << 20
ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key-d0-n0t-use"
# Fast failure in tests: few attempts, short timeouts.
TEST_OPTIONS = SyncOptions(concurrency=16, request_attempts=2, object_attempts=3, connect_timeout=2, read_timeout=10, settle_seconds=0)


class MotoServer:
    """`python -m moto.server` on a loopback address: a real S3 HTTP endpoint."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, env: dict[str, str] | None = None):
        self.host = host
        self.port = port
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> "MotoServer":
        env = {**os.environ, **self.env}
        env.pop("AWS_CA_BUNDLE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode(errors="replace")
            if not line:
                raise RuntimeError(f"moto exited with {self.proc.wait()}")
            m = re.search(r"Running on http://[^:]+:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        else:
            raise RuntimeError("moto did not start")
        # Drain the request log so moto never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for _ in iter(self.proc.stderr.readline, b""):
            pass

    def kill(self) -> None:
        """SIGKILL: the endpoint dies mid-request, as a crashed node would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def operator_client(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY, crc32: bool = True):
    """A plain boto3 client, as an operator's script would use. Current boto3 stores a
    CRC32 with every upload; `crc32=False` uploads as older tools do (an MD5 ETag only)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                      request_checksum_calculation="when_supported" if crc32 else "when_required"),
    )


def new_bucket(client) -> str:
    """A fresh bucket (tests share one moto)."""
    name = f"models-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


def upload(client, bucket: str, key: str, data: bytes, part_size: int | None = None) -> None:
    """Upload one object; with `part_size`, as a multipart upload of that part size."""
    if part_size:
        cfg = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=4)
        client.upload_fileobj(io.BytesIO(data), bucket, key, Config=cfg)
    else:
        client.put_object(Bucket=bucket, Key=key, Body=data)


def upload_version(client, bucket: str, prefix: str, version: int, files: dict[str, bytes], part_size: int | None = None) -> None:
    """Upload `files` (relative path -> bytes) as version `version` under `prefix`."""

    def one(item: tuple[str, bytes]) -> None:
        rel, data = item
        big = part_size if part_size and len(data) >= part_size else None
        upload(client, bucket, f"{prefix}{version}/{rel}", data, big)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, files.items()))


def savedmodel_files(seed: int, extra: int = 0) -> dict[str, bytes]:
    """A SavedModel-shaped version: nested variables/, a space and non-ASCII in names."""
    rnd = _rand(seed)
    files = {
        "saved_model.pb": rnd(3000),
        "variables/variables.index": rnd(200),
        "variables/variables.data-00000-of-00001": rnd(70_000),
        "assets/vocab 词表.txt": rnd(500),
        "assets.extra/tf serving warmup_requests": rnd(100),
    }
    for i in range(extra):
        files[f"extra/file-{i:03d}.bin"] = rnd(1000 + i)
    return files


def _rand(seed: int):
    state = [hashlib.sha256(str(seed).encode()).digest()]

    def rnd(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            state[0] = hashlib.sha256(state[0]).digest()
            out += state[0]
        return bytes(out[:n])

    return rnd


def random_bytes(n: int, seed: int) -> bytes:
    """Deterministic bytes, fast for large n (the same seed gives the same ETag)."""
    import random

    return random.Random(seed).randbytes(n)


def read_tree(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under root."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def numeric_versions(model_dir: Path) -> list[int]:
    """What a model server scanning the directory would consider versions."""
    if not model_dir.exists():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.name.isdigit() and p.is_dir())


class ServerView:
    """Plays a model server polling the model directory: every numeric directory it sees
    must hold exactly one of the expected complete trees. Runs in a thread."""

    def __init__(self, model_dir: Path, expected: dict[int, list[dict[str, bytes]]], interval: float = 0.002):
        self.model_dir = model_dir
        self.expected = {v: [{k: hashlib.md5(b).hexdigest() for k, b in t.items()} for t in trees] for v, trees in expected.items()}
        self.interval = interval
        self.violations: list[str] = []
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ServerView":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.check_once()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.check_once()
            time.sleep(self.interval)

    def check_once(self) -> None:
        for v in numeric_versions(self.model_dir):
            vdir = self.model_dir / str(v)
            try:
                fd = os.open(vdir, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                tree = _hash_tree_fd(fd)
            except FileNotFoundError:
                continue  # a replaced version being deleted after the swap: not served any more
            finally:
                os.close(fd)
            self.seen.add(v)
            if v in self.expected and tree not in self.expected[v]:
                self.violations.append(f"version {v}: saw {len(tree)} files not matching any complete version")


def _hash_tree_fd(dirfd: int, prefix: str = "") -> dict[str, str]:
    out = {}
    for entry in os.scandir(dirfd):
        rel = f"{prefix}{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=dirfd)
            try:
                out.update(_hash_tree_fd(sub, rel + "/"))
            finally:
                os.close(sub)
        else:
            fd = os.open(entry.name, os.O_RDONLY, dir_fd=dirfd)
            with os.fdopen(fd, "rb") as f:
                out[rel] = hashlib.md5(f.read()).hexdigest()
    return out


@pytest.fixture(scope="session")
def moto_server():
    """One moto for the session; each test takes its own bucket."""
    server = MotoServer().start()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server):
    """(operator client, fresh bucket, StoreConfig pointing at it with prefix 'repo')."""
    client = operator_client(moto_server.endpoint)
    bucket = new_bucket(client)
    store = StoreConfig("ois", moto_server.endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, bucket, "repo")
    return client, bucket, store

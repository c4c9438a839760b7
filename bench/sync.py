"""Benchmark: `inference-agent sync` against the tools an operator would otherwise script
(aws s3 sync, s3cmd sync, rclone sync), same endpoint, same data, one run.

    python bench/sync.py [--datasets a,b,c] [--repeat N] [--tools ours,aws,s3cmd,rclone,rclone-tuned]

The endpoint is moto[server] on loopback. Datasets (the issue's):
    a  2,000 files of 64 KiB (one version)
    b  4 files of 256 MiB (multipart, 8 MiB parts, as aws s3 cp uploads them)
    c  no-op re-sync of 10,000 objects (10 versions of 1,000 files of 1 KiB)
Every tool runs as a command (process start-up included, as in an operator's script)
into its own empty directory (a, b) or its own already-synced directory (c); each result
is checked for file count and bytes. Ratio = fastest peer's time / our time; targets:
a >= 1.5, b >= 1.0, c >= 5.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import yaml
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

ACCESS_KEY = "bench-access"
SECRET_KEY = "bench-secret-not-real"
BUCKET = "bench"
MiB = 1 << 20
TARGETS = {"a": 1.5, "b": 1.0, "c": 5.0}
SETTLE = 3.5  # > SyncOptions.settle_seconds
DESCRIPTIONS = {
    "a": "2,000 files x 64 KiB",
    "b": "4 files x 256 MiB",
    "c": "no-op, 10,000 objects",
}


@dataclass(frozen=True)
class Dataset:
    name: str
    files: dict[str, int]  # key under <name>/model/ -> size
    part_size: int | None = None
    noop: bool = False

    @property
    def total(self) -> int:
        return sum(self.files.values())


def datasets() -> dict[str, Dataset]:
    return {
        "a": Dataset("a", {f"1/file-{i:04d}.bin": 64 << 10 for i in range(2000)}),
        "b": Dataset("b", {f"1/shard-{i}.bin": 256 * MiB for i in range(4)}, part_size=8 * MiB),
        "c": Dataset("c", {f"{v}/part-{i:04d}.bin": 1024 for v in range(1, 11) for i in range(1000)}, noop=True),
    }


# ---- the endpoint ---------------------------------------------------------


class Moto:
    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True,
        )
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            m = re.search(r"Running on http://[^:]+:(\d+)", raw.decode(errors="replace"))
            if m:
                self.endpoint = f"http://127.0.0.1:{m.group(1)}"
                break
        else:
            raise SystemExit("moto did not start")
        threading.Thread(target=lambda: [None for _ in iter(self.proc.stderr.readline, b"")], daemon=True).start()

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait()


def client(endpoint: str):
    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1", config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )


def seed(endpoint: str, ds: Dataset) -> None:
    s3 = client(endpoint)
    rng = random.Random(ds.name)
    cfg = TransferConfig(multipart_threshold=ds.part_size or 1 << 40, multipart_chunksize=ds.part_size or 8 * MiB, max_concurrency=4)

    def put(item: tuple[str, int, int]) -> None:
        key, size, seed_ = item
        # Distinct content, so no tool can dedupe; randbytes is limited to 256 MiB - 1 B.
        data = random.Random(seed_).randbytes(size) if size < 64 * MiB else os.urandom(size)
        s3.upload_fileobj(io.BytesIO(data), BUCKET, f"{ds.name}/model/{key}", Config=cfg)

    items = [(k, s, rng.getrandbits(64)) for k, s in ds.files.items()]
    with ThreadPoolExecutor(4 if ds.part_size else 16) as pool:
        list(pool.map(put, items))


# ---- the tools ------------------------------------------------------------


@dataclass
class Tool:
    name: str
    label: str

    def command(self, endpoint: str, ds: Dataset, dest: Path, work: Path) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def tree(self, dest: Path) -> Path:
        """Where the model's version directories end up under `dest`."""
        return dest


class Ours(Tool):
    def command(self, endpoint, ds, dest, work):
        meta = work / f"self-{ds.name}.yaml"
        meta.write_text(yaml.safe_dump({
            "host": {"ip": "127.0.0.1", "instance_id": "i-bench", "role": "model_serving", "sid": "1"},
            "env": {"model.name": "model", "model.base.path": f"s3://{BUCKET}/{ds.name}", "s3.type": "ois",
                    "s3.endpoint": endpoint, "s3.access.key": ACCESS_KEY, "s3.secret.key": SECRET_KEY},
        }))
        os.chmod(meta, 0o600)
        return [sys.executable, "-m", "agent", "sync", "--metadata", str(meta), "--data-dir", str(dest)], {}

    def tree(self, dest):
        return dest / "models" / "model"


class Aws(Tool):
    def command(self, endpoint, ds, dest, work):
        conf = work / "aws-config"
        conf.write_text("[default]\nregion = us-east-1\n")
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_CONFIG_FILE": str(conf),
               "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-none")}
        return ["aws", "--endpoint-url", endpoint, "s3", "sync", f"s3://{BUCKET}/{ds.name}/model/", f"{dest}/",
                "--only-show-errors", "--no-progress"], env


class S3cmd(Tool):
    def command(self, endpoint, ds, dest, work):
        cfg = work / "s3cfg"
        host = endpoint.removeprefix("http://")
        cfg.write_text(f"[default]\naccess_key = {ACCESS_KEY}\nsecret_key = {SECRET_KEY}\nhost_base = {host}\n"
                       f"host_bucket = {host}\nuse_https = False\nsignature_v2 = False\n")
        os.chmod(cfg, 0o600)
        return ["s3cmd", "-c", str(cfg), "sync", "--no-progress", "-q", f"s3://{BUCKET}/{ds.name}/model/", f"{dest}/"], {}


class Rclone(Tool):
    def __init__(self, name: str, label: str, flags: list[str]):
        super().__init__(name, label)
        self.flags = flags

    def command(self, endpoint, ds, dest, work):
        env = {"RCLONE_CONFIG_M_TYPE": "s3", "RCLONE_CONFIG_M_PROVIDER": "Other", "RCLONE_CONFIG_M_ACCESS_KEY_ID": ACCESS_KEY,
               "RCLONE_CONFIG_M_SECRET_ACCESS_KEY": SECRET_KEY, "RCLONE_CONFIG_M_ENDPOINT": endpoint,
               "RCLONE_CONFIG_M_REGION": "us-east-1", "RCLONE_CONFIG_M_FORCE_PATH_STYLE": "true",
               "RCLONE_CONFIG": str(work / "rclone-none.conf")}
        return ["rclone", "sync", "-q", *self.flags, f"m:{BUCKET}/{ds.name}/model", str(dest)], env


class Floor(Tool):
    """Not a peer: what the endpoint itself needs. curl fetches exactly the requests a
    sync cannot avoid (every object, or every listing page) in parallel, with a fixed
    dummy signature (moto does not check it), writing nothing. No tool can beat this."""

    def command(self, endpoint, ds, dest, work):
        auth = ('header = "Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, '
                'SignedHeaders=host, Signature=0"\n')
        if ds.noop:
            urls = [f"{endpoint}/{BUCKET}/?list-type=2&prefix={ds.name}/model/{v}/"
                    for v in sorted({k.split("/")[0] for k in ds.files})]
        else:
            urls = [f"{endpoint}/{BUCKET}/{ds.name}/model/{k}" for k in ds.files]
        cfg = work / f"curl-{ds.name}.cfg"
        cfg.write_text(auth + "".join(f'url = "{u}"\noutput = "/dev/null"\n' for u in urls))
        dest.mkdir(parents=True, exist_ok=True)
        return ["curl", "-sSf", "-Z", "--parallel-max", "16", "-K", str(cfg)], {}


TOOLS = {
    "ours": Ours("ours", "inference-agent sync"),
    "aws": Aws("aws", "aws s3 sync"),
    "s3cmd": S3cmd("s3cmd", "s3cmd sync"),
    "rclone": Rclone("rclone", "rclone sync", []),
    "rclone-tuned": Rclone("rclone-tuned", "rclone sync (tuned*)",
                           ["--transfers", "32", "--checkers", "32", "--fast-list", "--use-server-modtime"]),
    "floor": Floor("floor", "endpoint floor (curl)**"),
}
PEERS = ("aws", "s3cmd", "rclone", "rclone-tuned")


def run_tool(tool: Tool, endpoint: str, ds: Dataset, dest: Path, work: Path) -> float:
    cmd, extra = tool.command(endpoint, ds, dest, work)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone rejects it on plain http
    env.update(extra)
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{tool.label} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def check(tool: Tool, ds: Dataset, dest: Path) -> None:
    if isinstance(tool, Floor):
        return
    root = tool.tree(dest)
    files = [p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    count, size = len(files), sum(p.stat().st_size for p in files)
    if (count, size) != (len(ds.files), ds.total):
        raise SystemExit(f"{tool.label} on {ds.name}: {count} files / {size} bytes, expected {len(ds.files)} / {ds.total}")


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {"aws": first_line(["aws", "--version"]), "s3cmd": first_line(["s3cmd", "--version"]),
            "rclone": first_line(["rclone", "version"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="a,b,c")
    ap.add_argument("--tools", default=",".join(TOOLS))  # "floor" is informational, never a peer
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool and dataset; the best counts")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir, removed after)")
    args = ap.parse_args()
    chosen = [TOOLS[t] for t in args.tools.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sync-"))
    work.mkdir(parents=True, exist_ok=True)
    moto = Moto()
    results: dict[str, dict[str, float]] = {}
    try:
        client(moto.endpoint).create_bucket(Bucket=BUCKET)
        for name in args.datasets.split(","):
            ds = datasets()[name]
            t0 = time.monotonic()
            seed(moto.endpoint, ds)
            print(f"[{name}] seeded {len(ds.files)} objects, {ds.total / MiB:.0f} MiB in {time.monotonic() - t0:.1f} s", flush=True)
            time.sleep(SETTLE)  # data at rest: the agent takes a version once it has been quiet
            results[name] = {}
            for tool in chosen:
                best = float("inf")
                for _ in range(args.repeat):
                    dest = work / f"{tool.name}-{name}"
                    if ds.noop:
                        if not dest.exists():
                            run_tool(tool, moto.endpoint, ds, dest, work)  # the initial sync is not timed
                    else:
                        shutil.rmtree(dest, ignore_errors=True)
                        subprocess.run(["sync"])  # no tool pays for another's dirty pages
                    best = min(best, run_tool(tool, moto.endpoint, ds, dest, work))
                    check(tool, ds, dest)
                results[name][tool.name] = best
                print(f"[{name}] {tool.label:24s} {best:8.2f} s", flush=True)
                if not ds.noop:
                    shutil.rmtree(work / f"{tool.name}-{name}", ignore_errors=True)
            if ds.noop:
                for tool in chosen:
                    shutil.rmtree(work / f"{tool.name}-{name}", ignore_errors=True)
    finally:
        moto.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    report(results, chosen)
    return 0


def report(results: dict[str, dict[str, float]], tools: list[Tool]) -> None:
    print()
    print(f"{'dataset':28s} " + " ".join(f"{t.label:>22s}" for t in tools) + f" {'ratio':>7s} {'target':>7s}")
    for name, times in results.items():
        peers = {k: v for k, v in times.items() if k in PEERS}
        ratio = min(peers.values()) / times["ours"] if peers and "ours" in times else float("nan")
        cells = " ".join(f"{times.get(t.name, float('nan')):21.2f}s" for t in tools)
        verdict = "met" if ratio >= TARGETS[name] else "MISSED"
        print(f"{name + ') ' + DESCRIPTIONS[name]:28s} {cells} {ratio:6.2f}x {TARGETS[name]:5.1f}x {verdict}")
    print("\nratio = fastest peer / inference-agent sync (higher is better for us).")
    print("* rclone tuned: --transfers 32 --checkers 32 --fast-list --use-server-modtime")
    print("** not a peer: the requests no sync can avoid, sent by curl with no signing, hashing or writing;")
    print("   the endpoint's own cost, a lower bound for every tool (moto serves one request at a time).")
    for k, v in versions().items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: `inference-agent sync` against the tools an operator would otherwise script
(aws s3 sync, s3cmd sync, rclone sync, s5cmd sync), same endpoint, same data, one run.

    python bench/sync.py [--datasets a,b,c] [--repeat N] [--tools ours,aws,s3cmd,rclone,rclone-tuned,s5cmd,floor,floor-writes]

The endpoint is moto[server] on loopback. Datasets (the issue's):
    a  2,000 files of 64 KiB (one version)
    b  4 files of 256 MiB (multipart, 8 MiB parts, as aws s3 cp uploads them)
    c  no-op re-sync of 10,000 objects (10 versions of 1,000 files of 1 KiB)
Every tool runs as a command (process start-up included, as in an operator's script)
into its own empty directory (a, b) or its own already-synced directory (c); ours runs
byte-compiled, as `pip install` leaves it (its __pycache__ is written first: a machine
with PYTHONDONTWRITEBYTECODE would otherwise recompile it on every run); each result
is checked for file count and bytes. Two ratios per dataset: ours / endpoint floor (the
requests no sync can avoid; moto serves one at a time, so it is the honest limit) and
ours / fastest peer. Targets: ours <= 1.15x floor (a), 1.3x (b), 1.15x (c), and ours <=
1.0x the fastest peer on each. Also reported: the CPU time the endpoint spent while each
tool ran (what that tool's requests cost the store: moto spends more CPU on a request
while another is in progress; see Floor), the CPU time of the daemon's periodic no-op sync
of (c) in a warm agent process, and two costs the floor leaves out: writing the files
(the floor again, each object written by curl to a new file) and, for a tool in Python,
the interpreter's start. Exits 1 naming every missed target.
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
import psutil
import yaml
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

ACCESS_KEY = "bench-access"
SECRET_KEY = "bench-secret-not-real"
BUCKET = "bench"
MiB = 1 << 20
# Ours / floor at most this; ours / fastest peer at most PEER_TARGET.
TARGETS = {"a": 1.15, "b": 1.3, "c": 1.15}
PEER_TARGET = 1.0
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
        self.process = psutil.Process(self.proc.pid)  # its CPU time, read around each tool's run
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

    def writes(self, ds: Dataset) -> bool:
        """Whether a run on `ds` leaves the data set's files under `dest` (checked after it)."""
        return True


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


class S5cmd(Tool):
    def command(self, endpoint, ds, dest, work):
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": "us-east-1",
               "AWS_CONFIG_FILE": str(work / "aws-none"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "aws-none")}
        return ["s5cmd", "--endpoint-url", endpoint, "sync", f"s3://{BUCKET}/{ds.name}/model/*", f"{dest}/"], env


class Floor(Tool):
    """Not a peer: what the endpoint itself needs. curl sends exactly the requests a
    sync cannot avoid (every listing page, then every object) with a fixed dummy
    signature (moto does not check it), writing nothing. No tool can beat this.

    Though asked for 16 in parallel, curl keeps about one connection open at a time
    against moto, which closes every connection (sampled with ss while it fetched 600
    objects: one connection in 411 of 449 samples, two in 4, none in 34). That is also
    the cheapest way to use moto: once two requests overlap, its threads contend for its
    locks and its CPU per request rises by 10-25 %. So this floor is the endpoint's
    cost with no two requests overlapping, sent by a client in C that leaves next to no
    gap between them."""

    def command(self, endpoint, ds, dest, work):
        auth = ('header = "Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, '
                'SignedHeaders=host, Signature=0"\n')
        # (URL, the object's key under <name>/model/, or None for a listing page)
        if ds.noop:
            urls = [(f"{endpoint}/{BUCKET}/?list-type=2&prefix={ds.name}/model/{v}/", None)
                    for v in sorted({k.split("/")[0] for k in ds.files})]
        else:
            # Every listing page (each page after the first starts after the previous
            # page's last key, as its continuation token would), then every object.
            keys = sorted(ds.files)
            urls = [(f"{endpoint}/{BUCKET}/?list-type=2&prefix={ds.name}/model/"
                     + (f"&start-after={ds.name}/model/{keys[i - 1]}" if i else ""), None)
                    for i in range(0, len(keys), 1000)]
            urls += [(f"{endpoint}/{BUCKET}/{ds.name}/model/{k}", k) for k in keys]
        cfg = work / f"curl-{self.name}-{ds.name}.cfg"
        cfg.write_text(auth + "".join(f'url = "{u}"\noutput = "{self.output(key, dest)}"\n' for u, key in urls))
        dest.mkdir(parents=True, exist_ok=True)
        return ["curl", "-sSf", "-Z", "--parallel-max", "16", "--create-dirs", "-K", str(cfg)], {}

    def output(self, key: str | None, dest: Path) -> str:
        """Where curl writes the answer for object `key` (None: a listing page)."""
        return "/dev/null"

    def writes(self, ds):
        return False


class FloorWrites(Floor):
    """Not a peer either: the floor, with each object written to a new file of its own
    (listings still go to /dev/null). The difference from the floor is what creating and
    writing the files cost curl here, which the floor leaves out. Not a lower bound: curl
    writes each file from one stream, and a tool writing a large file from several
    streams at once can do it faster (ours did, on (b))."""

    def output(self, key, dest):
        return "/dev/null" if key is None else str(dest / key)

    def writes(self, ds):
        return not ds.noop


TOOLS = {
    "ours": Ours("ours", "inference-agent sync"),
    "aws": Aws("aws", "aws s3 sync"),
    "s3cmd": S3cmd("s3cmd", "s3cmd sync"),
    "rclone": Rclone("rclone", "rclone sync", []),
    "rclone-tuned": Rclone("rclone-tuned", "rclone sync (tuned*)",
                           ["--transfers", "32", "--checkers", "32", "--fast-list", "--use-server-modtime"]),
    "s5cmd": S5cmd("s5cmd", "s5cmd sync"),
    "floor": Floor("floor", "endpoint floor (curl)**"),
    "floor-writes": FloorWrites("floor-writes", "floor + file writes***"),
}
PEERS = ("aws", "s3cmd", "rclone", "rclone-tuned", "s5cmd")


def run_tool(tool: Tool, endpoint: str, ds: Dataset, dest: Path, work: Path,
             store: psutil.Process) -> tuple[float, float]:
    """(wall seconds, CPU seconds the endpoint spent meanwhile) of one run of `tool`."""
    cmd, extra = tool.command(endpoint, ds, dest, work)
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}  # rclone rejects it on plain http
    env.update(extra)
    store_cpu = _cpu(store)
    started = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{tool.label} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, _cpu(store) - store_cpu


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def same_memory_state(nbytes: int) -> None:
    """Put memory in the same state before every timed download.

    A virtual machine that hands freed memory back to its host (virtio-balloon free page
    reporting, as here) charges ~2 s of kernel time per GiB to whoever next writes into
    memory freed more than ~2 s earlier, and next to nothing to a writer that follows a
    fresh free: measured here, 1 GiB written by 4 threads took 0.1 s of system time right
    after the previous copy was deleted and 2.0 s after a 5 s pause. Left alone, each
    tool's time would depend on how long ago the tool before it freed its memory. So
    every tool starts just after three times the dataset's bytes were touched and freed:
    the tool's page cache and the store's answers (moto builds each in memory) both draw
    on them. That narrows the spread but does not end it: the 1 GiB of (b) still took
    one run in three twice as long, the time in the kernel's copy into the page cache."""
    subprocess.run(["sync"])  # no tool pays for another's dirty pages
    blob = b"\1" * (3 * nbytes)  # filled, so every page is really taken
    del blob


def check(tool: Tool, ds: Dataset, dest: Path) -> None:
    if not tool.writes(ds):
        return
    root = tool.tree(dest)
    files = [p for p in root.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    count, size = len(files), sum(p.stat().st_size for p in files)
    if (count, size) != (len(ds.files), ds.total):
        raise SystemExit(f"{tool.label} on {ds.name}: {count} files / {size} bytes, expected {len(ds.files)} / {ds.total}")


def python_start() -> float:
    """Median seconds of a bare Python process that imports an HTTP client and asyncio: the
    start-up any sync written in Python pays before its first request (the floor pays none)."""
    times = []
    for _ in range(11):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import asyncio, urllib3"], check=True)
        times.append(time.monotonic() - started)
    return sorted(times)[len(times) // 2]


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    return {"aws": first_line(["aws", "--version"]), "s3cmd": first_line(["s3cmd", "--version"]),
            "rclone": first_line(["rclone", "version"]), "s5cmd": first_line(["s5cmd", "version"])}


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
    compile_agent()
    moto = Moto()
    results: dict[str, dict[str, float]] = {}
    endpoint_cpu: dict[str, dict[str, float]] = {}  # the endpoint's CPU seconds in each tool's counted run
    agent_cpu: tuple[float, float] | None = None
    try:
        client(moto.endpoint).create_bucket(Bucket=BUCKET)
        for name in args.datasets.split(","):
            ds = datasets()[name]
            t0 = time.monotonic()
            seed(moto.endpoint, ds)
            print(f"[{name}] seeded {len(ds.files)} objects, {ds.total / MiB:.0f} MiB in {time.monotonic() - t0:.1f} s", flush=True)
            time.sleep(SETTLE)  # data at rest: the agent takes a version once it has been quiet
            results[name] = {}
            endpoint_cpu[name] = {}
            # Every run writes a directory of its own, all removed only once the data set is
            # done: on an ext4 without a journal (as here), a file created within a minute of
            # many deletions costs far more (the inode allocator checks each recently freed
            # inode: 2,000 files took 0.49 s of system time to create right after 2,000 were
            # deleted, 0.03 s otherwise), so a tool would pay for the deletions of the one before.
            trees: list[Path] = []
            for tool in chosen:
                best = float("inf")
                for attempt in range(args.repeat):
                    if ds.noop:
                        dest = work / f"{tool.name}-{name}"
                        if not dest.exists():
                            run_tool(tool, moto.endpoint, ds, dest, work, moto.process)  # the initial sync is not timed
                    else:
                        dest = work / f"{tool.name}-{name}-{attempt}"
                        same_memory_state(ds.total)
                    trees.append(dest)
                    seconds, store_cpu = run_tool(tool, moto.endpoint, ds, dest, work, moto.process)
                    if seconds < best:
                        best, endpoint_cpu[name][tool.name] = seconds, store_cpu
                    check(tool, ds, dest)
                results[name][tool.name] = best
                print(f"[{name}] {tool.label:24s} {best:8.2f} s   (endpoint CPU {endpoint_cpu[name][tool.name]:.2f} s)",
                      flush=True)
            if ds.noop and "ours" in args.tools.split(","):  # its directory is synced already
                agent_cpu = agent_noop_cpu(moto.endpoint, ds, work / f"ours-{name}")
                print(f"[{name}] agent no-op sync: {agent_cpu[0] * 1000:.0f} ms CPU, "
                      f"{agent_cpu[1] * 1000:.0f} ms wall", flush=True)
            for tree in trees:
                shutil.rmtree(tree, ignore_errors=True)
    finally:
        moto.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    missed = report(results, endpoint_cpu, chosen, agent_cpu, python_start())
    return 1 if missed else 0


def compile_agent() -> None:
    """Byte-compile the agent package in place, as an installed copy is."""
    import agent

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(agent.__file__).parent)],
                   check=True, stdout=subprocess.DEVNULL)


def agent_noop_cpu(endpoint: str, ds: Dataset, dest: Path) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one periodic no-op sync of `ds` inside this process,
    as the daemon runs it: modules loaded and the store's client built by an earlier sync."""
    import asyncio

    from agent import log as agent_log
    from agent.modelstore import StoreConfig, SyncOptions
    from agent.modelstore.sync import sync_model

    agent_log.setup(level="warning")

    store = StoreConfig("ois", endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY, BUCKET, ds.name)
    options = SyncOptions()
    models = dest / "models"

    async def once() -> None:
        result = await sync_model(store, "model", models, options=options)
        if result.error or result.changed:
            raise SystemExit(f"agent no-op sync of {ds.name} was not a no-op: {result.to_dict()}")

    asyncio.run(once())  # warms the process as the daemon's earlier syncs have
    cpu, wall = time.process_time(), time.monotonic()
    asyncio.run(once())
    return time.process_time() - cpu, time.monotonic() - wall


def report(results: dict[str, dict[str, float]], endpoint_cpu: dict[str, dict[str, float]], tools: list[Tool],
           agent_cpu: tuple[float, float] | None, start: float) -> list[str]:
    """Print the table (`start`: seconds of a bare Python start); returns the missed targets, each named."""
    missed = []
    print()
    print(f"{'dataset':28s} " + " ".join(f"{t.label:>22s}" for t in tools)
          + f" {'ours/peer':>10s} {'ours/floor':>11s} {'targets':>14s}")
    for name, times in results.items():
        peers = {k: v for k, v in times.items() if k in PEERS}
        ours = times.get("ours")
        peer = ours / min(peers.values()) if peers and ours else float("nan")
        floor = ours / times["floor"] if ours and "floor" in times else float("nan")
        cells = " ".join(f"{times.get(t.name, float('nan')):21.2f}s" for t in tools)
        verdicts = []
        if not peer <= PEER_TARGET and peers and ours:
            fastest = min(peers, key=peers.get)
            missed.append(f"({name}) ours is {peer:.2f}x the fastest peer ({fastest}), target <= {PEER_TARGET:.2f}x")
            verdicts.append("peer MISSED")
        if not floor <= TARGETS[name] and ours and "floor" in times:
            missed.append(f"({name}) ours is {floor:.2f}x the endpoint floor, target <= {TARGETS[name]:.2f}x")
            verdicts.append("floor MISSED")
        target = f"{PEER_TARGET:.2f}/{TARGETS[name]:.2f}x"
        print(f"{name + ') ' + DESCRIPTIONS[name]:28s} {cells} {peer:9.2f}x {floor:10.2f}x {target:>14s} "
              f"{' '.join(verdicts) or 'met'}")
    print("\nendpoint CPU seconds while each tool ran (moto's own work for that tool's requests):")
    for name, cpu in endpoint_cpu.items():
        print(f"{name + ')':28s} " + " ".join(f"{cpu.get(t.name, float('nan')):21.2f}s" for t in tools))
    print("\nratios: our time / the fastest peer's, our time / the floor's (lower is better for us).")
    print("* rclone tuned: --transfers 32 --checkers 32 --fast-list --use-server-modtime")
    print("** not a peer: the requests no sync can avoid, sent by curl with no signing, hashing or writing,")
    print("   in practice one at a time: the endpoint's own cost, a lower bound for every tool (see Floor).")
    print("*** not a peer: the floor, each object written by curl to a new file: what writing cost curl here.")
    print(f"A Python process importing urllib3 and asyncio starts in {start * 1000:.0f} ms here, before any request: "
          + ", ".join(f"{start / times['floor']:.1%} of ({name})'s floor" for name, times in results.items()
                      if times.get("floor")) + ".")
    if agent_cpu is not None:
        print(f"agent's periodic no-op sync of (c), warm process: {agent_cpu[0] * 1000:.0f} ms CPU, "
              f"{agent_cpu[1] * 1000:.0f} ms wall")
    for k, v in versions().items():
        print(f"  {k}: {v}")
    for m in missed:
        print(f"MISSED {m}")
    return missed


if __name__ == "__main__":
    sys.exit(main())

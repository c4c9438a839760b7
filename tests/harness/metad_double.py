"""TEST DOUBLE of the platform's metadata service (metad). Not part of the product.

metad cannot be installed here, so the tests run this small server, which reproduces
the behaviour the agent relies on (reference/appcenter.md section 1):

- `GET|HEAD /self[/<path>]`: JSON with `Accept: application/json` (`?pretty=true`
  indents), otherwise text (`<relative path>\\t<value>` per leaf, sorted; a leaf is its
  raw value). Every leaf is a string. A missing path or empty directory is a 404 with
  body `{"code":404,"message":"Not found","type":"ERROR"}`.
- Every response carries `X-Metad-Version`, a counter that grows on every write and
  starts again when the server is restarted (a new instance).
- `?wait=true&prev_version=<v>`: answers at once when v > 0 and differs from the current
  version; otherwise blocks until a change, debounced (100 ms with no further write), and
  answers the full current subtree with the version read *before* the wait (so a client
  that passes it back gets a second, immediate answer per change, as with metad).
  No server-side timeout.
- Per-caller mapping: the double holds one raw cluster tree (`/hosts/<role>/<id>/...`,
  `/env`, `/cluster`, ...). `/self` for a caller is that tree with `/host` set to the
  node of `/hosts` whose `ip` equals the caller's IP. Because on one machine every
  client connects from 127.0.0.1, the caller's IP is resolved in this order:
  `ip_map[caller]`, then the caller's own IP, then the address the request arrived on
  (so a test can point node k's agent at `http://<node k ip>:<port>/` with the double
  listening on that address too, see `listen_ips`), then `ip_map["*"]`. A raw tree that
  already has its own `/host` (a plain `/self` tree file, as the file source reads) is
  served as it is when no node matches.
- metad's manage API, on the same port here: `GET /v1/data[/<path>]` reads the raw
  tree, `PUT /v1/data[/<path>]` merges a JSON value in, `POST` replaces, `DELETE`
  removes. Each call is one write (one version bump).

Not reproduced: HEAD-only subtleties, `?wait` on paths below a mapping leaf, links.

Run it on its own (for demos, or to kill it with a real signal):
`python tests/harness/metad_double.py --tree cluster.yaml --listen 127.0.0.1:8000 [--ip-map 127.0.0.1=10.0.0.5]`
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

VERSION_HEADER = "X-Metad-Version"
NOT_FOUND = {"code": 404, "message": "Not found", "type": "ERROR"}


def _normalize(value: Any) -> Any:
    """Leaves as metad serves them: strings; lists as maps "0", "1", ...; empty dirs dropped."""
    if isinstance(value, dict):
        out = {str(k): _normalize(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v != {}}
    if isinstance(value, (list, tuple)):
        return _normalize({str(i): v for i, v in enumerate(value)})
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def _lookup(tree: Any, parts: list[str]) -> Any:
    node = tree
    for p in parts:
        if not isinstance(node, dict) or p not in node:
            return None
        node = node[p]
    return None if node == {} else node


def _text(value: Any, prefix: str = "") -> list[str]:
    if not isinstance(value, dict):
        return [f"{prefix}\t{value}"]
    lines = []
    for k in sorted(value):
        lines += _text(value[k], f"{prefix}/{k}" if prefix else k)
    return lines


class MetadDouble:
    """An in-process metad-compatible HTTP server for tests (a test double, see module doc)."""

    def __init__(
        self,
        tree: dict | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        debounce: float = 0.1,
        ip_map: dict[str, str] | None = None,
        listen_ips: list[str] | None = None,
    ):
        self.raw: dict = _normalize(tree or {})
        self.host = host
        self.port = port
        self.debounce = debounce
        self.ip_map = dict(ip_map or {})
        self.listen_ips = list(listen_ips or [])
        self.version = 1 if tree else 0
        self.requests = 0
        self._changed = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The `--metadata` value that reaches this server."""
        return f"http://{self.host}:{self.port}/"

    def url_on(self, ip: str) -> str:
        """The URL on one of `listen_ips`: /self there maps to that node."""
        return f"http://{ip}:{self.port}/"

    # --- writes ----------------------------------------------------------------------

    def _write(self) -> None:
        self.version += 1
        if self._timer:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self.debounce, self._wake_waiters)

    def _wake_waiters(self) -> None:
        self._timer = None
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    def set_tree(self, tree: dict) -> None:
        """Replace the whole raw tree (one write)."""
        self._assign("", tree, merge=False)

    def put(self, path: str, value: Any) -> None:
        """Set a leaf, or merge a directory into the one at `path` (one write)."""
        self._assign(path, value, merge=True)

    def replace(self, path: str, value: Any) -> None:
        """Set a leaf or directory at `path`, dropping what was there (one write)."""
        self._assign(path, value, merge=False)

    def delete(self, path: str) -> None:
        """Remove a leaf or directory (one write, even when it was absent)."""
        self._assign(path, None, merge=False)

    def _assign(self, path: str, value: Any, merge: bool) -> None:
        raw = copy.deepcopy(self.raw)
        parts = _split(path)
        new = _normalize(value) if value is not None else None
        if not parts:
            raw = _merge(raw, new) if merge and isinstance(new, dict) else (new if isinstance(new, dict) else {})
        else:
            node = raw
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    node[p] = {}
                node = node[p]
            last = parts[-1]
            if new is None:
                node.pop(last, None)
            elif merge and isinstance(new, dict) and isinstance(node.get(last), dict):
                node[last] = _merge(node[last], new)
            else:
                node[last] = new
        self.raw = _normalize(raw)
        self._write()

    # --- mapping ---------------------------------------------------------------------

    def self_tree(self, caller_ip: str, local_ip: str | None = None) -> dict | None:
        """The `/self` tree metad would serve to a caller at `caller_ip`, or None."""
        nodes = {}
        for members in (self.raw.get("hosts") or {}).values():
            for instance_id, fields in (members if isinstance(members, dict) else {}).items():
                if isinstance(fields, dict) and fields.get("ip"):
                    nodes[fields["ip"]] = {"instance_id": instance_id, **fields}
        for candidate in (self.ip_map.get(caller_ip), caller_ip, local_ip, self.ip_map.get("*")):
            if candidate and candidate in nodes:
                tree = copy.deepcopy(self.raw)
                tree["host"] = nodes[candidate]
                return tree
        if "host" in self.raw:
            return copy.deepcopy(self.raw)
        return None

    # --- HTTP ------------------------------------------------------------------------

    def _answer(self, request: web.Request, value: Any, version: int) -> web.Response:
        headers = {VERSION_HEADER: str(version)}
        if value is None:
            return web.Response(text=json.dumps(NOT_FOUND, separators=(",", ":")), status=404,
                                content_type="application/json", headers=headers)
        if "application/json" in request.headers.get("Accept", ""):
            pretty = request.query.get("pretty") == "true"
            text = json.dumps(value, indent=2) if pretty else json.dumps(value, separators=(",", ":"))
            return web.Response(text=text, content_type="application/json", headers=headers)
        text = value if isinstance(value, str) else "\n".join(_text(value))
        return web.Response(text=text, content_type="text/plain", headers=headers)

    async def _self(self, request: web.Request) -> web.Response:
        self.requests += 1
        version = self.version
        if request.query.get("wait") == "true":
            try:
                prev = int(request.query.get("prev_version", "0"))
            except ValueError:
                prev = 0
            if not (prev > 0 and prev != self.version):
                await self._changed.wait()
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        tree = self.self_tree(request.remote or "", sockname[0] if sockname else None)
        value = _lookup(tree, _split(request.match_info.get("path", ""))) if tree is not None else None
        return self._answer(request, value, version)

    async def _manage(self, request: web.Request) -> web.Response:
        path = request.match_info.get("path", "")
        if request.method == "GET":
            value = _lookup(self.raw, _split(path)) if _split(path) else self.raw
            return self._answer(request, value, self.version)
        if request.method == "DELETE":
            self.delete(path)
        elif request.method in ("PUT", "POST"):
            self._assign(path, await request.json(), merge=request.method == "PUT")
        else:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "PUT", "POST", "DELETE"])
        return web.json_response({"version": self.version})

    async def start(self) -> None:
        """Listen on `host:port` (port 0 picks a free one) and on every `listen_ips`."""
        app = web.Application()
        app.router.add_route("GET", "/self", self._self)
        app.router.add_route("GET", "/self/{path:.*}", self._self)
        app.router.add_route("*", "/v1/data", self._manage)
        app.router.add_route("*", "/v1/data/{path:.*}", self._manage)
        # handler_cancellation: a long-poll whose client went away ends with it.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        for ip in self.listen_ips:
            await web.TCPSite(self._runner, ip, self.port).start()

    async def stop(self) -> None:
        """Stop serving and drop every open connection, as if metad died."""
        if self._timer:
            self._timer.cancel()
        if self._runner:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "MetadDouble":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


async def _serve(args: argparse.Namespace) -> None:
    path = Path(args.tree) if args.tree else None
    tree = yaml.safe_load(path.read_text()) if path else {}
    host, _, port = args.listen.rpartition(":")
    ip_map = dict(item.split("=", 1) for item in args.ip_map)
    double = MetadDouble(tree, host=host, port=int(port), ip_map=ip_map)
    await double.start()
    print(f"metad test double on {double.url}", flush=True)
    mtime = path.stat().st_mtime_ns if path else None
    while True:  # follow the tree file, as the file source would
        await asyncio.sleep(0.05)
        if path is None:
            continue
        try:
            current = path.stat().st_mtime_ns
            if current != mtime:
                mtime = current
                double.set_tree(yaml.safe_load(path.read_text()) or {})
        except (OSError, yaml.YAMLError) as e:
            print(f"metad test double: cannot read {path}: {e}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    """Run the test double standalone until killed."""
    parser = argparse.ArgumentParser(description="metad-compatible TEST DOUBLE")
    parser.add_argument("--tree", help="YAML/JSON raw cluster tree (or a /self tree); followed for changes")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--ip-map", action="append", default=[], metavar="CALLER=NODE_IP")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()

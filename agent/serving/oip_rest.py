"""The Open Inference Protocol's REST API (KServe v2), beside TF Serving's on the same port.

  GET  /v2                                           server metadata
  GET  /v2/health/live | /v2/health/ready            200 when true
  GET  /v2/models/<m>[/versions/<v>]                 model metadata
  GET  /v2/models/<m>[/versions/<v>]/ready           200 when ready
  POST /v2/models/<m>[/versions/<v>]/infer           inference

Infer bodies are JSON tensors, or with the binary tensor extension a JSON header
(`Inference-Header-Content-Length` bytes) followed by the inputs' raw bytes. Errors are
{"error": "..."} with TF Serving's HTTP status for the case (400 bad input, 404 unknown
model, 503 a model still loading, which Envoy retries on another node)."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Executor
from typing import Any
from urllib.parse import unquote

import orjson
from aiohttp import web

import agent.log
from agent.serving import limits, oip, rest_codec, tracing
from agent.serving.canary import served_by
from agent.serving.metrics import RequestRecord, ServingMetrics
from agent.serving.errors import ServingError, internal, invalid_argument, not_found
from agent.serving.manager import ModelManager

log = agent.log.get(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
_JSON = "application/json"
_BINARY = "application/octet-stream"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# Parameters that ask for what this server does not do (shared memory, Triton's
# classification extension): refused rather than silently ignored.
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "classification")


def _json(status: int, doc: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc, option=_NUMPY), content_type=_JSON)


def _error(e: ServingError) -> web.Response:
    return web.Response(status=e.http_status, body=rest_codec.error_body(e.message), content_type=_JSON)


def add_routes(app: web.Application, manager: ModelManager, executor: Executor, admission: limits.Admission,
               metrics: ServingMetrics | None = None) -> None:
    """Serve the protocol's /v2 paths on `app` (register before any catch-all route)."""
    api = OipRestApi(manager, executor, admission, metrics)
    app.router.add_route("*", "/v2", api.handle)
    app.router.add_route("*", "/v2/{tail:.*}", api.handle)


class OipRestApi:
    """The /v2 handlers over one model manager."""

    def __init__(self, manager: ModelManager, executor: Executor, admission: limits.Admission,
                 metrics: ServingMetrics | None = None):
        self._manager = manager
        self._executor = executor
        self._admission = admission  # shared with TF Serving's API: one cap per server
        self._metrics = metrics or ServingMetrics(manager.configured)

    async def handle(self, request: web.Request) -> web.Response:
        """Dispatch one /v2 request by method and path."""
        path = request.rel_url.raw_path
        method = request.method
        try:
            if method == "GET" and path in ("/v2", "/v2/"):
                return _json(200, {"name": oip.SERVER_NAME, "version": oip.server_version(), "extensions": list(oip.EXTENSIONS)})
            if method == "GET" and path == "/v2/health/live":
                return _json(200, {"live": True})
            if method == "GET" and path == "/v2/health/ready":
                return self._server_ready()
            if m := _MODEL_PATH.fullmatch(path):
                name, version = unquote(m.group(1)), unquote(m.group(2) or "")
                action = m.group(3)
                if method == "POST" and action == "infer":
                    with self._metrics.request("ModelInfer", "REST", name, request.headers) as call:
                        self._admission.enter()
                        try:
                            response = await self._infer(request, name, version, call)
                            call.io(answered=response.body)
                            return response
                        finally:
                            self._admission.leave()
                if method == "GET" and action == "ready":
                    oip.servable(self._manager, name, version)  # the lookup's error says why not
                    return _json(200, {"name": name, "ready": True})
                if method == "GET" and action is None:
                    return _json(200, _metadata_doc(oip.model_metadata(self._manager, name, version)))
            raise not_found(f"Not an Open Inference Protocol call: {method} {path[:200]}")
        except ServingError as e:
            return _error(e)

    def _server_ready(self) -> web.Response:
        waiting = oip.unready_models(self._manager)
        if waiting:
            # 503 lets Envoy ask another node, which may be ready.
            return _json(503, {"error": f"models not ready yet: {', '.join(sorted(waiting))}"})
        return _json(200, {"ready": True})

    async def _infer(self, request: web.Request, name: str, version: str, call: RequestRecord) -> web.Response:
        header_length = request.headers.get(HEADER_LENGTH)
        body = await request.read()
        call.io(given=body)
        servable = oip.servable(self._manager, name, version, infer=True)
        call.served(servable)
        loop = asyncio.get_running_loop()
        try:
            status, payload, headers = await loop.run_in_executor(
                self._executor, tracing.in_context(_infer, servable, body, header_length))
            headers = {**headers, **served_by(servable)}
        except ServingError as e:
            return _error(call.fail(e))
        except Exception as e:
            log.exception("v2 infer failed", model=name)
            return _error(call.fail(internal(f"{type(e).__name__}: {e}")))
        content_type = _BINARY if HEADER_LENGTH in headers else _JSON
        return web.Response(status=status, body=payload, content_type=content_type, headers=headers)


def _metadata_doc(meta: oip.ModelMetadata) -> dict:
    def tensors(items):
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in items]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header and the binary data after it."""
    if header_length is None:
        return rest_codec.loads(body), b""
    if not header_length.isascii() or not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise invalid_argument(
            f"{HEADER_LENGTH} must be a positive integer no larger than the body ({len(body)} bytes), "
            f"got {header_length[:40]!r}"
        )
    split = int(header_length)
    return rest_codec.loads(body[:split]), body[split:]


def _parameters(item: dict, where: str) -> dict:
    params = item.get("parameters", {})
    if not isinstance(params, dict):
        raise invalid_argument(f"{where}: 'parameters' must be an object")
    for key in _UNSUPPORTED_PARAMETERS:
        if key in params:
            raise invalid_argument(f"{where}: parameter '{key}' is not supported by this server")
    return params


def _flag(params: dict, key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise invalid_argument(f"{where}: parameter '{key}' must be true or false")
    return value


def _inputs(doc: dict, binary: bytes) -> list[oip.Tensor]:
    items = doc.get("inputs")
    if not isinstance(items, list):
        raise invalid_argument("request needs an 'inputs' list")
    oip.check_input_count(len(items))
    tensors = []
    offset = 0
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid_argument(f"inputs[{i}] must be an object")
        name = item.get("name")
        where = f"input '{name}'" if isinstance(name, str) else f"inputs[{i}]"
        params = _parameters(item, where)
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(binary) - offset:
                raise invalid_argument(
                    f"{where}: binary_data_size {_text(size)} is not a size within the "
                    f"{len(binary) - offset} binary bytes left in the request"
                )
            if "data" in item:
                raise invalid_argument(f"{where}: give 'data' or binary_data_size, not both")
            tensors.append(oip.from_raw(name, item.get("datatype"), item.get("shape"), binary[offset : offset + size]))
            offset += size
        else:
            if "data" not in item:
                raise invalid_argument(f"{where}: missing 'data'")
            tensors.append(oip.from_json(name, item.get("datatype"), item.get("shape"), item["data"]))
    if offset != len(binary):
        raise invalid_argument(f"request has {len(binary) - offset} binary bytes that no input claims")
    return tensors


def _text(value: Any) -> str:
    return orjson.dumps(value, default=repr).decode()[:40]


def _outputs(doc: dict) -> tuple[list[str], dict[str, bool], bool]:
    """Requested output names, each one's binary_data flag, and the request's binary_data_output."""
    all_binary = _flag(_parameters(doc, "request"), "binary_data_output", "request")
    items = doc.get("outputs", [])
    if not isinstance(items, list):
        raise invalid_argument("'outputs' must be a list")
    if len(items) > oip.MAX_INPUTS:
        raise invalid_argument(f"request asks for {len(items)} outputs; at most {oip.MAX_INPUTS} are accepted")
    names, binary = [], {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise invalid_argument(f"outputs[{i}] must be an object with a 'name' string")
        where = f"output '{item['name']}'"
        params = _parameters(item, where)
        names.append(item["name"])
        if "binary_data" in params:
            binary[item["name"]] = _flag(params, "binary_data", where)
    return names, binary, all_binary


def _infer(servable, body: bytes, header_length: str | None) -> tuple[int, bytes, dict[str, str]]:
    """Parse, run and encode one infer request (in the inference executor)."""
    doc, binary = _split_body(body, header_length)
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid_argument("'id' must be a string")
    inputs = _inputs(doc, binary)
    names, binary_flags, all_binary = _outputs(doc)
    result = oip.infer(servable, inputs, names)
    answer: dict[str, Any] = {"model_name": result.model_name, "model_version": result.model_version}
    if request_id is not None:
        answer["id"] = request_id
    outputs, chunks = [], []
    for tensor in result.outputs:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        if binary_flags.get(tensor.name, all_binary):
            raw = oip.to_raw(tensor.array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = oip.json_data(tensor.array, tensor.name)
        outputs.append(entry)
    answer["outputs"] = outputs
    header = orjson.dumps(answer, option=_NUMPY)
    if not chunks:
        return 200, header, {}
    return 200, b"".join([header, *chunks]), {HEADER_LENGTH: str(len(header))}

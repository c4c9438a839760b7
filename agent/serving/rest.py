"""TF Serving's REST API (port 8501) on aiohttp.

  POST /v1/models/<name>[/versions/<v> | /labels/<l>]:(predict|classify|regress)
  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]            model status
  GET  /v1/models/<name>[/versions/<v> | /labels/<l>]/metadata   signatures

The servable is picked on the event loop; parsing, inference and serializing happen in
one hop to the inference executor."""

from __future__ import annotations

import asyncio
import re
from concurrent.futures import Executor
from urllib.parse import unquote

from aiohttp import web
from google.protobuf import json_format

from agent.serving import inference, limits, oip_rest, rest_codec, tracing
from agent.serving import metrics as serving_metrics
from agent.serving.canary import CANARY, served_by
import agent.log
from agent.serving.errors import ServingError, internal, invalid_argument
from agent.serving.manager import ModelManager
from agent.serving.protos import error_codes_pb2, get_model_status_pb2, model_pb2
from agent.serving.versions import MAX_VERSION

# TF Serving's own path patterns (model_servers/http_rest_api_util.cc).
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I
)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
# Not TF Serving's: which runtime and precision serve each loaded version.
_RUNTIME_PATH = re.compile(r"/v1/models/([^/:]+)/runtime")
_JSON = "application/json"
log = agent.log.get(__name__)
TOO_LARGE = 413
# A body past the cap is counted as TF Serving's code for a resource limit.
TOO_LARGE_CODE = error_codes_pb2.RESOURCE_EXHAUSTED


def _reply(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=_JSON)


def _error(e: ServingError) -> web.Response:
    return _reply(e.http_status, rest_codec.error_body(e.message))


def _target(match: re.Match) -> tuple[str, int | None, str | None]:
    name = unquote(match.group(1) or "")
    digits = match.group(2)
    # As TF Serving parses it (leading zeros allowed), but within int64: a larger number
    # is a client error, not a 500.
    version = int(digits) if digits else None
    if version is not None and version > MAX_VERSION:
        raise invalid_argument(f"Invalid version in request: {digits[:30]}")
    label = unquote(match.group(3)) if match.group(3) else None
    return name, version, label


class RestApi:
    """The REST handlers over one model manager."""

    def __init__(
        self, manager: ModelManager, executor: Executor, admission: limits.Admission | None = None,
        max_body: int = limits.MAX_REST_BODY_BYTES, metrics: serving_metrics.ServingMetrics | None = None,
    ):
        self._manager = manager
        self._executor = executor
        self._admission = admission or limits.Admission()
        self._max_body = max_body
        self._metrics = metrics or serving_metrics.ServingMetrics(manager.configured)

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application(client_max_size=self._max_body)
        oip_rest.add_routes(app, self._manager, self._executor, self._admission, self._metrics)  # the Open Inference Protocol's /v2 paths
        app.router.add_get(serving_metrics.PATH, self._metrics_text)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        """Dispatch one request by method and path, as TF Serving does."""
        path = request.path
        try:
            if request.method == "POST" and (m := _PREDICT_PATH.fullmatch(path)):
                api = m.group(4).capitalize()  # TF Serving's API label: Predict, Classify, Regress
                with self._metrics.request(api, "REST", unquote(m.group(1) or ""), request.headers) as call:
                    response = await self._admitted(request, m, call)
                    call.io(answered=response.body)
                    return response
            if request.method == "GET" and (m := _RUNTIME_PATH.fullmatch(path)):
                return self._runtime(unquote(m.group(1)))
            if request.method == "GET" and (m := _STATUS_PATH.fullmatch(path)):
                name, version, label = _target(m)
                if not name:
                    raise invalid_argument("Missing model name in request.")
                if m.group(4):
                    return self._metadata(name, version, label)
                return self._status(name, version, label)
            raise invalid_argument(f"Malformed request: {request.method} {path}")
        except ServingError as e:
            return _error(e)

    async def _metrics_text(self, request: web.Request) -> web.Response:
        """The server's metrics in Prometheus text, at TF Serving's path."""
        return web.Response(body=self._metrics.render(), headers={"Content-Type": serving_metrics.CONTENT_TYPE})

    async def _admitted(self, request: web.Request, m: re.Match, call: serving_metrics.RequestRecord) -> web.Response:
        """Read and serve one inference request if the server is under its caps."""
        if request.content_length is not None and request.content_length > self._max_body:
            call.code = TOO_LARGE_CODE
            return self._too_large(request.content_length)
        self._admission.enter()
        try:
            try:
                async with asyncio.timeout(limits.REST_BODY_TIMEOUT):
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body past the limit
                call.code = TOO_LARGE_CODE
                return self._too_large(None)
            except TimeoutError:
                call.code = error_codes_pb2.DEADLINE_EXCEEDED
                response = _reply(408, rest_codec.error_body(
                    f"Request body not received within {limits.REST_BODY_TIMEOUT:g} seconds"))
                response.force_close()
                return response
            call.io(given=body)
            return await self._post(m.group(4).lower(), *_target(m), body, call)
        finally:
            self._admission.leave()

    def _too_large(self, size: int | None) -> web.Response:
        given = f"of {size} bytes " if size is not None else ""
        message = f"Request body {given}exceeds the limit of {self._max_body} bytes"
        # Close the connection: the unread body is not drained.
        response = _reply(TOO_LARGE, rest_codec.error_body(message))
        response.force_close()
        return response

    async def _post(self, method: str, name: str, version: int | None, label: str | None, body: bytes,
                    call: serving_metrics.RequestRecord) -> web.Response:
        servable = self._manager.servable(name, version, label, infer=True)
        call.served(servable)
        work = {"predict": _predict, "classify": _classify, "regress": _regress}[method]
        loop = asyncio.get_running_loop()
        try:
            response = _reply(200, await loop.run_in_executor(self._executor, tracing.in_context(work, servable, body)))
            response.headers.update(served_by(servable))
            return response
        except ServingError as e:
            return _error(call.fail(e))
        except MemoryError:
            return _error(call.fail(limits.resource_exhausted("Out of memory while serving the request")))
        except Exception as e:
            log.exception("request failed", model=name, method=method)
            return _error(call.fail(internal(f"{type(e).__name__}: {e}")))

    def _status(self, name: str, version: int | None, label: str | None) -> web.Response:
        response = get_model_status_pb2.GetModelStatusResponse()
        for s in self._manager.status(name, version, label):
            entry = response.model_version_status.add(version=s.version, state=s.state)
            entry.status.error_code = s.error_code
            entry.status.error_message = s.error_message
        text = json_format.MessageToJson(
            response, always_print_fields_with_no_presence=True, preserving_proto_field_name=True, indent=1
        )
        return _reply(200, text.encode())

    def _runtime(self, name: str) -> web.Response:
        versions = [{"version": str(n), **servable.details(), "requests": self._manager.served(name, n)}
                    for n, servable in self._manager.versions(name)]
        if not versions:
            self._manager.status(name)  # NOT_FOUND for an unknown model, as status says it
        labels = self._manager.labels(name)
        return _reply(200, rest_codec.dumps({
            "model": name, "versions": versions, "labels": labels,
            "canary_percent": self._manager.canary.percent(name) if CANARY in labels else 0,
        }))

    def _metadata(self, name: str, version: int | None, label: str | None) -> web.Response:
        servable = self._manager.servable(name, version, label)
        spec = model_pb2.ModelSpec(name=servable.name)
        spec.version.value = servable.version
        opts = dict(always_print_fields_with_no_presence=True, preserving_proto_field_name=True, indent=1)
        spec_json = json_format.MessageToJson(spec, **opts)
        sigs_json = json_format.MessageToJson(inference.signature_def_map(servable), **opts)
        # TF Serving writes the signature map unpacked from its Any, under metadata.signature_def.
        text = '{\n"model_spec":' + spec_json + ',\n"metadata": {"signature_def": ' + sigs_json + "}\n}\n"
        return _reply(200, text.encode())


def _predict(servable, body: bytes) -> bytes:
    doc = rest_codec.loads(body)
    signature = inference.signature_of(servable, rest_codec.signature_name(doc))
    arrays, form = rest_codec.request_arrays(doc, signature)
    outputs = inference.predict(servable, signature, arrays)
    return rest_codec.predict_response(outputs, form)


def _classify(servable, body: bytes) -> bytes:
    doc = rest_codec.loads(body)
    examples, context = rest_codec.examples_request(doc)
    results = inference.classify(servable, rest_codec.signature_name(doc), examples, context)
    return rest_codec.dumps({"results": [[[label, score] for label, score in row] for row in results]})


def _regress(servable, body: bytes) -> bytes:
    doc = rest_codec.loads(body)
    examples, context = rest_codec.examples_request(doc)
    return rest_codec.dumps({"results": inference.regress(servable, rest_codec.signature_name(doc), examples, context)})



"""The Open Inference Protocol's gRPC API (KServe v2): inference.GRPCInferenceService,
beside TF Serving's services on the same port, from the project's grpc_service.proto.

Inputs come in each tensor's typed contents or, as Triton's clients send them, in
raw_input_contents; outputs are answered in raw_output_contents, as Triton does.
Errors are gRPC status codes: INVALID_ARGUMENT for bad input, NOT_FOUND for an unknown
model, UNAVAILABLE for one still loading (Envoy retries that on another node)."""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor
from typing import Awaitable, Callable

import grpc
import numpy as np

import agent.log
from agent.serving import limits, oip, tracing
from agent.serving.canary import send_served_by
from agent.serving.metrics import ServingMetrics
from agent.serving.errors import ServingError, invalid_argument
from agent.serving.manager import ModelManager
from agent.serving.protos import grpc_service_pb2 as pb
from agent.serving.protos import grpc_service_pb2_grpc as pb_grpc

log = agent.log.get(__name__)

# The typed contents field of each datatype, and the wider type its values are read as
# (int_contents carries INT8/INT16 too: read as int64, range-checked, then narrowed).
_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int64),
    "INT16": ("int_contents", np.int64),
    "INT32": ("int_contents", np.int64),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint64),
    "UINT16": ("uint_contents", np.uint64),
    "UINT32": ("uint_contents", np.uint64),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", object),
}
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset", "classification")


def _check_parameters(parameters, where: str) -> None:
    for key in _UNSUPPORTED_PARAMETERS:
        if key in parameters:
            raise invalid_argument(f"{where}: parameter '{key}' is not supported by this server")


def _from_contents(item: pb.ModelInferRequest.InferInputTensor) -> oip.Tensor:
    """An input tensor from its typed contents; their count must match the shape exactly."""
    where = f"input '{item.name}'"
    dtype = oip.numpy_dtype(item.datatype, where)
    shape = oip.check_shape(list(item.shape), where)
    count = math.prod(shape)
    if item.datatype not in _CONTENTS:
        raise invalid_argument(f"{where}: {item.datatype} has no typed contents; send it in raw_input_contents")
    field_name, wide = _CONTENTS[item.datatype]
    field = getattr(item.contents, field_name)
    if len(field) != count:
        raise invalid_argument(f"{where}: shape {list(shape)} needs {count} elements, {field_name} has {len(field)}")
    if item.datatype == "BYTES":
        values = np.empty(count, dtype=object)
        values[:] = list(field)
        return oip.Tensor(item.name, item.datatype, values.reshape(shape))
    values = np.array(field, dtype=wide)
    if dtype.kind in "iu" and values.size:
        info = np.iinfo(dtype)
        if values.min() < info.min or values.max() > info.max:
            raise invalid_argument(f"{where}: value out of range for {item.datatype}")
    return oip.Tensor(item.name, item.datatype, values.astype(dtype, copy=False).reshape(shape))


def request_inputs(request: pb.ModelInferRequest) -> list[oip.Tensor]:
    """The request's input tensors, checked before any array is made."""
    oip.check_input_count(len(request.inputs))
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid_argument(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    tensors = []
    for i, item in enumerate(request.inputs):
        if not item.name:
            raise invalid_argument(f"inputs[{i}] has no name")
        _check_parameters(item.parameters, f"input '{item.name}'")
        if raw:
            if item.HasField("contents"):
                raise invalid_argument(f"input '{item.name}': give contents or raw_input_contents, not both")
            tensors.append(oip.from_raw(item.name, item.datatype, list(item.shape), raw[i]))
        else:
            tensors.append(_from_contents(item))
    return tensors


def _infer(servable, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """Parse, run and encode one ModelInfer call (in the inference executor)."""
    _check_parameters(request.parameters, "request")
    inputs = request_inputs(request)
    for out in request.outputs:
        _check_parameters(out.parameters, f"output '{out.name}'")
    result = oip.infer(servable, inputs, [o.name for o in request.outputs])
    response = pb.ModelInferResponse(model_name=result.model_name, model_version=result.model_version, id=request.id)
    for tensor in result.outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(oip.to_raw(tensor.array))
    return response


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer."""

    def __init__(self, manager: ModelManager, executor: Executor, admission: limits.Admission,
                 metrics: ServingMetrics | None = None):
        self._manager = manager
        self._executor = executor
        self._admission = admission  # shared with TF Serving's API: one cap per server
        self._metrics = metrics or ServingMetrics(manager.configured)

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable]):
        try:
            return await fn()
        except ServingError as e:
            await context.abort(e.grpc_status, e.message)
        except Exception as e:
            log.exception("v2 gRPC request failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    async def ServerLive(self, request, context):
        """The server answers: live."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        """Ready when every configured model has a version ready."""
        return pb.ServerReadyResponse(ready=oip.server_ready(self._manager))

    async def ModelReady(self, request, context):
        """Ready when the model (or the version) can infer; an unknown model is not ready."""

        async def run():
            oip.parse_version(request.version)  # a malformed version is an error, not "not ready"
            return pb.ModelReadyResponse(ready=oip.model_ready(self._manager, request.name, request.version))

        return await self._call(context, run)

    async def ServerMetadata(self, request, context):
        """The server's name, version and extensions."""
        return pb.ServerMetadataResponse(name=oip.SERVER_NAME, version=oip.server_version(), extensions=oip.EXTENSIONS)

    async def ModelMetadata(self, request, context):
        """A model's versions, platform and tensors."""

        async def run():
            meta = oip.model_metadata(self._manager, request.name, request.version)
            response = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
            for t in meta.inputs:
                response.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            for t in meta.outputs:
                response.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
            return response

        return await self._call(context, run)

    async def ModelInfer(self, request, context):
        """Run one inference."""

        async def run():
            metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            with self._metrics.request("ModelInfer", "GRPC", request.model_name, metadata) as call:
                self._admission.enter()
                try:
                    call.io(given=request)
                    servable = oip.servable(self._manager, request.model_name, request.model_version, infer=True)
                    call.served(servable)
                    loop = asyncio.get_running_loop()
                    response = await loop.run_in_executor(self._executor, tracing.in_context(_infer, servable, request))
                finally:
                    self._admission.leave()
                call.io(answered=response)
                await send_served_by(context, servable)
                return response

        return await self._call(context, run)


def add_service(server: grpc.aio.Server, manager: ModelManager, executor: Executor, admission: limits.Admission,
                metrics: ServingMetrics | None = None) -> None:
    """Register inference.GRPCInferenceService on a gRPC server."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(manager, executor, admission, metrics), server)

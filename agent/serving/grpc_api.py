"""TF Serving's gRPC API (port 8500): tensorflow.serving.PredictionService and
tensorflow.serving.ModelService, wire-compatible with TF Serving's clients."""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Awaitable, Callable

import grpc
from google.protobuf import any_pb2

import agent.log
from agent.serving import inference, limits, tensors, tracing
from agent.serving.config import ConfigError, from_proto
from agent.serving.errors import ServingError, invalid_argument
from agent.serving.canary import send_served_by
from agent.serving.manager import ModelManager
from agent.serving.metrics import ServingMetrics
from agent.serving.protos import (
    classification_pb2,
    error_codes_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from agent.serving.servable import Servable

log = agent.log.get(__name__)
SIGNATURE_DEF_FIELD = "signature_def"


def channel_options(max_message: int = limits.MAX_GRPC_MESSAGE_BYTES) -> list[tuple[str, int]]:
    """Server options: gRPC refuses a larger message with RESOURCE_EXHAUSTED before parsing it."""
    return [("grpc.max_receive_message_length", max_message), ("grpc.max_send_message_length", -1)]


def _spec_target(spec: model_pb2.ModelSpec) -> tuple[str, int | None, str | None]:
    choice = spec.WhichOneof("version_choice")
    version = spec.version.value if choice == "version" else None
    label = spec.version_label if choice == "version_label" else None
    return spec.name, version, label


def _answer_spec(servable: Servable, signature_name: str, out: model_pb2.ModelSpec) -> None:
    out.name = servable.name
    out.version.value = servable.version
    out.signature_name = signature_name


def _examples(request_input) -> tuple[list[dict], dict | None]:
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [inference.example_features(e) for e in request_input.example_list.examples], None
    if kind == "example_list_with_context":
        lwc = request_input.example_list_with_context
        return [inference.example_features(e) for e in lwc.examples], inference.example_features(lwc.context)
    raise invalid_argument("Input is empty.")


class _Base:
    def __init__(self, manager: ModelManager, executor: Executor, admission: limits.Admission | None = None,
                 metrics: ServingMetrics | None = None):
        self._manager = manager
        self._executor = executor
        self._admission = admission or limits.Admission()
        self._metrics = metrics or ServingMetrics(manager.configured)

    async def _call(self, context: grpc.aio.ServicerContext, fn: Callable[[], Awaitable]):
        try:
            return await fn()
        except ServingError as e:
            await context.abort(e.grpc_status, e.message)
        except MemoryError:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "Out of memory while serving the request")
        except Exception as e:
            log.exception("gRPC request failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")

    async def _off_loop(self, work: Callable):
        return await asyncio.get_running_loop().run_in_executor(self._executor, tracing.in_context(work))


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata (trace context headers among it)."""
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


class PredictionService(_Base, prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress and GetModelMetadata."""

    async def _infer(self, context, request, work: Callable, api: str):
        async def run():
            with self._metrics.request(api, "GRPC", request.model_spec.name, _metadata(context)) as call:
                call.io(given=request)
                servable = self._manager.servable(*_spec_target(request.model_spec), infer=True)
                call.served(servable)
                self._admission.enter()
                try:
                    response = await self._off_loop(lambda: work(servable, request))
                finally:
                    self._admission.leave()
                call.io(answered=response)
                await send_served_by(context, servable)
                return response

        return await self._call(context, run)

    async def Predict(self, request: predict_pb2.PredictRequest, context):
        """Run a signature on the request's tensors."""
        return await self._infer(context, request, _predict, "Predict")

    async def Classify(self, request: classification_pb2.ClassificationRequest, context):
        """Classify tf.Examples with a classify signature."""
        return await self._infer(context, request, _classify, "Classify")

    async def Regress(self, request: regression_pb2.RegressionRequest, context):
        """Regress tf.Examples with a regress signature."""
        return await self._infer(context, request, _regress, "Regress")

    async def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        """The model's signature_def map (the only metadata field TF Serving knows)."""

        async def run():
            if not request.metadata_field:
                raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid_argument(f"Metadata field {field} is not supported")
            servable = self._manager.servable(*_spec_target(request.model_spec))
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _answer_spec(servable, "", response.model_spec)
            packed = any_pb2.Any()
            packed.Pack(inference.signature_def_map(servable))
            response.metadata[SIGNATURE_DEF_FIELD].CopyFrom(packed)
            return response

        return await self._call(context, run)


ADMIN_REFUSED = ("HandleReloadConfigRequest is not served on the network; "
                 "the node's agent reloads the model server over its local admin socket")
Reload = Callable[[list], Awaitable[None]]


class ModelService(_Base, model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus, and HandleReloadConfigRequest where `reload` is given (the local
    admin socket); on the network ports every call that changes the server is refused."""

    def __init__(self, manager: ModelManager, executor: Executor, reload: Reload | None = None):
        super().__init__(manager, executor)
        self._reload = reload

    async def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        """States of a model's versions."""

        async def run():
            response = get_model_status_pb2.GetModelStatusResponse()
            for s in self._manager.status(*_spec_target(request.model_spec)):
                entry = response.model_version_status.add(version=s.version, state=s.state)
                entry.status.error_code = s.error_code
                entry.status.error_message = s.error_message
            return response

        return await self._call(context, run)

    async def HandleReloadConfigRequest(self, request: model_management_pb2.ReloadConfigRequest, context):
        """Serve the given config; answers once its models are loaded and the old ones
        unloaded. PERMISSION_DENIED on the network ports."""
        if self._reload is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, ADMIN_REFUSED)
        response = model_management_pb2.ReloadConfigResponse()
        try:
            await self._reload(from_proto(request.config, "ReloadConfigRequest"))
        except ConfigError as e:
            response.status.error_code = error_codes_pb2.INVALID_ARGUMENT
            response.status.error_message = str(e)
            return response
        response.status.error_code = error_codes_pb2.OK
        return response


def _predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    signature = inference.signature_of(servable, request.model_spec.signature_name)
    # Count and names first: no tensor (an unknown extra input included) is materialised
    # for a request the signature refuses anyway.
    limits.check_input_count(len(request.inputs))
    inference._check_aliases(list(request.inputs), list(signature.inputs))
    arrays = {alias: tensors.to_ndarray(proto, alias) for alias, proto in request.inputs.items()}
    outputs = inference.predict(servable, signature, arrays, list(request.output_filter))
    response = predict_pb2.PredictResponse()
    _answer_spec(servable, signature.name, response.model_spec)
    for alias, array in outputs.items():
        tensors.from_ndarray(array, response.outputs[alias])
    return response


def _classify(servable: Servable, request: classification_pb2.ClassificationRequest):
    examples, context = _examples(request.input)
    signature = inference.signature_of(servable, request.model_spec.signature_name)
    results = inference.classify(servable, signature.name, examples, context)
    response = classification_pb2.ClassificationResponse()
    _answer_spec(servable, signature.name, response.model_spec)
    for row in results:
        classifications = response.result.classifications.add()
        for label, score in row:
            classifications.classes.add(label=label, score=score)
    return response


def _regress(servable: Servable, request: regression_pb2.RegressionRequest):
    examples, context = _examples(request.input)
    signature = inference.signature_of(servable, request.model_spec.signature_name)
    values = inference.regress(servable, signature.name, examples, context)
    response = regression_pb2.RegressionResponse()
    _answer_spec(servable, signature.name, response.model_spec)
    for value in values:
        response.result.regressions.add(value=value)
    return response


class _Malformed:
    """A request message that did not parse (stands in for it until the handler refuses it)."""

    def __init__(self, error: str):
        self.error = error


def _lenient(message_class):
    """A deserializer that turns unparseable bytes into _Malformed instead of raising
    (gRPC would answer UNKNOWN; TF Serving's answer is INVALID_ARGUMENT)."""

    def parse(data: bytes):
        try:
            return message_class.FromString(data)
        except Exception as e:  # DecodeError, nesting past protobuf's recursion limit
            return _Malformed(f"{type(e).__name__}: {e}")

    return parse


def _refusing_malformed(method):
    async def handle(request, context):
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Could not parse the request: {request.error}")
        return await method(request, context)

    return handle


def _add_prediction_service(server: grpc.aio.Server, servicer: PredictionService) -> None:
    """PredictionService as the generated code registers it, with lenient request parsing."""
    types = {
        "Classify": (classification_pb2.ClassificationRequest, classification_pb2.ClassificationResponse),
        "Regress": (regression_pb2.RegressionRequest, regression_pb2.RegressionResponse),
        "Predict": (predict_pb2.PredictRequest, predict_pb2.PredictResponse),
        "GetModelMetadata": (
            get_model_metadata_pb2.GetModelMetadataRequest, get_model_metadata_pb2.GetModelMetadataResponse
        ),
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            _refusing_malformed(getattr(servicer, name)),
            request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString,
        )
        for name, (request_type, response_type) in types.items()
    }
    service = "tensorflow.serving.PredictionService"
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


def add_services(
    server: grpc.aio.Server, manager: ModelManager, executor: Executor, admission: limits.Admission | None = None,
    metrics: ServingMetrics | None = None,
) -> None:
    """Register both TF Serving services on a public gRPC server (no admin call)."""
    _add_prediction_service(server, PredictionService(manager, executor, admission, metrics))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, executor), server)


def add_admin_services(server: grpc.aio.Server, manager: ModelManager, executor: Executor, reload: Reload) -> None:
    """Register ModelService with its admin calls, for the local admin socket only."""
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager, executor, reload), server)

"""The agent's client of a model server's admin call: HandleReloadConfigRequest, so a
changed models.config reaches the server at once instead of on its next poll.

The built-in server serves that call only on its local admin socket (mode 0600) and
refuses it on the network ports. TF Serving has no such switch: it serves the call on
its gRPC port to anyone who reaches it, so for the `tfserving` backend the agent calls
the node's own gRPC port, and only the network around the node (Envoy routes only the
public API; 8500 reachable from the cluster's nodes alone) can keep others out."""

from __future__ import annotations

import grpc
from google.protobuf import text_format

from agent.serving.protos import model_management_pb2, model_service_pb2_grpc


class ReloadFailed(Exception):
    """The model server did not take the config; the message says why."""


def reload_request(config_text: str) -> model_management_pb2.ReloadConfigRequest:
    """A ReloadConfigRequest carrying the text-format models.config `config_text`."""
    request = model_management_pb2.ReloadConfigRequest()
    try:
        text_format.Parse(config_text, request.config)
    except text_format.ParseError as e:
        raise ReloadFailed(f"models.config is not a ModelServerConfig: {e}") from None
    return request


async def reload_config(target: str, config_text: str, timeout: float) -> None:
    """Ask the model server at `target` (`unix:/path` or `host:port`) to serve
    `config_text` now; returns once it answered OK (its new models are loaded)."""
    request = reload_request(config_text)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = await stub.HandleReloadConfigRequest(request, timeout=timeout)
        except grpc.aio.AioRpcError as e:
            raise ReloadFailed(f"{target}: {e.code().name}: {e.details()}") from None
    if response.status.error_code != 0:
        raise ReloadFailed(f"{target}: error {response.status.error_code}: {response.status.error_message}")



"""Hostile requests of the security replays and the fuzz, as raw bytes and protos."""

from __future__ import annotations

import socket

import grpc

from agent.serving.protos import (
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from agent.serving.protos import types_pb2


def deep_json(levels: int = 100_000) -> bytes:
    """The body that overflowed orjson 3.8/3.9's C stack."""
    return b'{"instances": ' + b'{"a":' * levels + b"1" + b"}" * (levels + 1)


def huge_declared_predict(elements: int = 25_000_000) -> predict_pb2.PredictRequest:
    """A ~35-byte Predict declaring a float tensor of `elements` values and carrying none."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.add(size=elements)
    return request


def grpc_call(target: str, method: str, request, timeout: float = 60) -> tuple[grpc.StatusCode, object]:
    """Call PredictionService/<method> (or ModelService/HandleReloadConfigRequest); (code, reply)."""
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1),
                                                ("grpc.max_receive_message_length", -1)]) as channel:
        if method == "HandleReloadConfigRequest":
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
        else:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            return grpc.StatusCode.OK, getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as e:
            return e.code(), e.details()


def raw_grpc_call(target: str, path: str, body: bytes, timeout: float = 60) -> tuple[grpc.StatusCode, str]:
    """A unary call with arbitrary request bytes (no client-side serialization)."""
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        try:
            call(body, timeout=timeout)
            return grpc.StatusCode.OK, ""
        except grpc.RpcError as e:
            return e.code(), e.details() or ""


def reload_config_request() -> model_management_pb2.ReloadConfigRequest:
    """The admin call that replaced the served model list from the network."""
    request = model_management_pb2.ReloadConfigRequest()
    config = request.config.model_config_list.config.add()
    config.name = "evil"
    config.base_path = "/etc"
    config.model_platform = "tensorflow"
    return request


def http_raw(ip: str, port: int, head: bytes, body_chunks=(), timeout: float = 30) -> tuple[int, bytes]:
    """Send raw HTTP bytes; (status, body) of the answer, (0, b"") when none came."""
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(head)
        try:
            for chunk in body_chunks:
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read its answer
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                part = s.recv(65536)
                if not part:
                    break
                data += part
            if b"\r\n\r\n" not in data:
                return 0, b""
            head_part, _, body = data.partition(b"\r\n\r\n")
            lines = head_part.split(b"\r\n")
            status = int(lines[0].split()[1])
            length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                           if line.lower().startswith(b"content-length:")), None)
            while length is not None and len(body) < length:
                part = s.recv(65536)
                if not part:
                    break
                body += part
            return status, body
        except (ConnectionResetError, socket.timeout):
            return 0, b""

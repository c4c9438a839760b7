"""A test double of an OpenTelemetry collector (no collector program is installed here):
OTLP over gRPC, `opentelemetry.proto.collector.trace.v1.TraceService/Export`, on the
`opentelemetry-proto` package's own messages; it keeps every span it receives."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as exported, with the service.name of its resource."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict


class OtlpReceiverDouble(trace_service_pb2_grpc.TraceServiceServicer):
    """`with OtlpReceiverDouble(ip) as receiver:` listens on ip:4317 until the block ends."""

    def __init__(self, ip: str, port: int = 4317):
        self.endpoint = f"{ip}:{port}"
        self._spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        if self._server.add_insecure_port(self.endpoint) == 0:
            raise OSError(f"cannot listen on {self.endpoint}")

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context):
        """Keep the request's spans."""
        received = []
        for resource_spans in request.resource_spans:
            service = next((a.value.string_value for a in resource_spans.resource.attributes
                            if a.key == "service.name"), "")
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    attributes = {a.key: a.value.string_value or a.value.int_value for a in s.attributes}
                    received.append(ReceivedSpan(service, s.name, s.trace_id.hex(), s.span_id.hex(),
                                                 s.parent_span_id.hex(), s.kind, attributes))
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far."""
        with self._lock:
            return list(self._spans)

    def __enter__(self) -> "OtlpReceiverDouble":
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(grace=1).wait()

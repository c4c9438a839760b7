"""Errors of the model server as TF Serving reports them: a canonical error code
(tensorflow.error.Code) and a message, mapped to HTTP and gRPC status codes."""

from __future__ import annotations

import grpc

from agent.serving.protos import error_codes_pb2 as codes

# TF Serving's HTTP mapping of canonical codes (model_servers/http_server.cc).
_HTTP_STATUS = {
    codes.OK: 200,
    codes.CANCELLED: 499,
    codes.UNKNOWN: 500,
    codes.INVALID_ARGUMENT: 400,
    codes.DEADLINE_EXCEEDED: 504,
    codes.NOT_FOUND: 404,
    codes.ALREADY_EXISTS: 409,
    codes.PERMISSION_DENIED: 403,
    codes.RESOURCE_EXHAUSTED: 429,
    codes.FAILED_PRECONDITION: 400,
    codes.ABORTED: 409,
    codes.OUT_OF_RANGE: 400,
    codes.UNIMPLEMENTED: 501,
    codes.INTERNAL: 500,
    codes.UNAVAILABLE: 503,
    codes.DATA_LOSS: 500,
    codes.UNAUTHENTICATED: 401,
}

# gRPC status codes carry the same numbers as the canonical codes.
_GRPC_STATUS = {code.value[0]: code for code in grpc.StatusCode}


class ServingError(Exception):
    """A request or load failure with TF Serving's error code and message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving answers this error with."""
        return _HTTP_STATUS.get(self.code, 500)

    @property
    def grpc_status(self) -> grpc.StatusCode:
        """The gRPC status code of this error."""
        return _GRPC_STATUS.get(self.code, grpc.StatusCode.UNKNOWN)


def invalid_argument(message: str) -> ServingError:
    """An INVALID_ARGUMENT error (HTTP 400)."""
    return ServingError(codes.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """A NOT_FOUND error (HTTP 404)."""
    return ServingError(codes.NOT_FOUND, message)


def unavailable(message: str) -> ServingError:
    """An UNAVAILABLE error (HTTP 503): retryable, e.g. on another node."""
    return ServingError(codes.UNAVAILABLE, message)


def failed_precondition(message: str) -> ServingError:
    """A FAILED_PRECONDITION error (HTTP 400)."""
    return ServingError(codes.FAILED_PRECONDITION, message)


def unimplemented(message: str) -> ServingError:
    """An UNIMPLEMENTED error (HTTP 501)."""
    return ServingError(codes.UNIMPLEMENTED, message)


def internal(message: str) -> ServingError:
    """An INTERNAL error (HTTP 500)."""
    return ServingError(codes.INTERNAL, message)

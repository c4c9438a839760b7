"""The model server's request limits, checked before the work each guards (reading,
parsing, allocating, decoding, running) and answered with TF Serving's error for the
case, never a crash or INTERNAL. The values live in agent/limits.py."""

from __future__ import annotations

import math
from typing import Iterable

from agent.limits import (  # noqa: F401  (re-exported for the serving modules)
    MAX_CONCURRENT_REQUESTS,
    MAX_FILL_BYTES,
    MAX_GRPC_MESSAGE_BYTES,
    MAX_GRPC_RPCS,
    MAX_IMAGE_PIXELS,
    MAX_INPUTS,
    MAX_REST_BODY_BYTES,
    MAX_TENSOR_ELEMENTS,
    MAX_TENSOR_RANK,
    REST_BODY_TIMEOUT,
)
from agent.serving.errors import ServingError, invalid_argument, unavailable
from agent.serving.protos import error_codes_pb2


def check_input_count(count: int) -> None:
    """INVALID_ARGUMENT when a request names more inputs than any signature may take."""
    if count > MAX_INPUTS:
        raise invalid_argument(f"request has {count} inputs; at most {MAX_INPUTS} are accepted")


def check_shape(shape: Iterable[int], where: str = "") -> int:
    """The element count of a declared shape; INVALID_ARGUMENT past the rank or element limit."""
    shape = tuple(shape)
    if len(shape) > MAX_TENSOR_RANK:
        raise invalid_argument(f"{where}tensor rank {len(shape)} exceeds the limit of {MAX_TENSOR_RANK}")
    count = math.prod(shape)
    # Zero-size shapes count too: numpy cannot even describe [0, 2**62].
    if math.prod(max(d, 1) for d in shape) > MAX_TENSOR_ELEMENTS:
        raise invalid_argument(
            f"{where}tensor shape {list(shape)} has {count} elements, more than the limit of {MAX_TENSOR_ELEMENTS}"
        )
    return count


def check_image(width: int, height: int, where: str = "") -> None:
    """INVALID_ARGUMENT for a picture larger than MAX_IMAGE_PIXELS (checked before decoding)."""
    if width * height > MAX_IMAGE_PIXELS:
        raise invalid_argument(
            f"{where}image of {width}x{height} pixels exceeds the limit of {MAX_IMAGE_PIXELS} pixels"
        )


class Admission:
    """A cap on requests in progress: `enter` refuses past the cap instead of waiting.

    Used from the event loop only (REST and gRPC handlers), so a plain counter is enough."""

    def __init__(self, limit: int = MAX_CONCURRENT_REQUESTS):
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        """Count one request in; UNAVAILABLE (HTTP 503) when the server is at its cap."""
        if self.active >= self.limit:
            raise unavailable(f"server is busy: {self.active} requests in progress (limit {self.limit})")
        self.active += 1

    def leave(self) -> None:
        """Count one request out."""
        self.active -= 1


def resource_exhausted(message: str) -> ServingError:
    """A RESOURCE_EXHAUSTED error (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""
    return ServingError(error_codes_pb2.RESOURCE_EXHAUSTED, message)

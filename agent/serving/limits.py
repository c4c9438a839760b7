"""Every bound the model server puts on a network request, in one place. Each is checked
before the work it guards (reading, parsing, allocating, decoding, running) and answered
with TF Serving's error for the case, never a crash or INTERNAL.

  limit                     value      client's error
  MAX_REST_BODY_BYTES       64 MiB     HTTP 413 {"error": ...}
  MAX_GRPC_MESSAGE_BYTES    64 MiB     gRPC RESOURCE_EXHAUSTED (enforced by gRPC itself)
  JSON nesting              1024       HTTP 400 (orjson >= 3.9.15 refuses deeper input)
  MAX_TENSOR_RANK           32         400 / INVALID_ARGUMENT
  MAX_TENSOR_ELEMENTS       2**24      400 / INVALID_ARGUMENT (declared or sent)
  MAX_FILL_BYTES            4 MiB      400 / INVALID_ARGUMENT (shape larger than values sent)
  MAX_INPUTS                64         400 / INVALID_ARGUMENT
  MAX_IMAGE_PIXELS          4096*4096  400 / INVALID_ARGUMENT (checked on the header)
  MAX_CONCURRENT_REQUESTS   64         HTTP 503 / gRPC UNAVAILABLE (Envoy retries elsewhere)
"""

from __future__ import annotations

import math
from typing import Iterable

from agent.serving.errors import ServingError, invalid_argument, unavailable
from agent.serving.protos import error_codes_pb2

MIB = 1 << 20
# A ResNet batch of 32 images as JSON floats is ~50 MB; anything larger is refused
# before it is read (aiohttp buffers the whole body; parsing amplifies it ~10x).
MAX_REST_BODY_BYTES = 64 * MIB
MAX_GRPC_MESSAGE_BYTES = 64 * MIB
# TensorFlow allows rank 254; no served model takes more than a handful of dimensions,
# and nested JSON lists are walked recursively.
MAX_TENSOR_RANK = 32
# 64 MiB of float32 per input tensor.
MAX_TENSOR_ELEMENTS = 1 << 24
# A TensorProto may declare more elements than it carries (TensorFlow pads with the last
# value); the padding it makes the server allocate is bounded by this many bytes.
MAX_FILL_BYTES = 4 * MIB
MAX_INPUTS = 64
# 16.7 megapixels (a 4096 x 4096 picture) per encoded image.
MAX_IMAGE_PIXELS = 4096 * 4096
# Inference requests in progress (parsing included) per model server; beyond it the
# request is refused at once instead of queueing without bound.
MAX_CONCURRENT_REQUESTS = 64


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
    if count > MAX_TENSOR_ELEMENTS:
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

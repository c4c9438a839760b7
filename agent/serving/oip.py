"""The Open Inference Protocol (KServe v2) on the model manager, independent of the
transport: tensors as the protocol describes them (name, datatype, shape, elements),
checked and turned into numpy arrays, run through a servable's `serving_default`
signature, and model metadata and readiness. REST (oip_rest) and gRPC (oip_grpc) call
these; `infer` and the tensor decoders are blocking: run them in the inference executor.

A v2 tensor name is a signature alias (what TF Serving's API calls an input or output),
so `x`/`y` for half_plus_two and `images`/`probabilities`/`classes` for digits.

Every input is bounded before work: the number of inputs, each shape's rank and element
count, and the elements actually sent must match the declared shape exactly (no padding,
unlike TensorProto), so a request never makes the server allocate more than it sent."""

from __future__ import annotations

import math
import re
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import orjson

import agent
from agent.serving import inference, rest_codec
from agent.serving.errors import ServingError, invalid_argument
from agent.serving.manager import AVAILABLE, ModelManager
from agent.serving import limits
from agent.serving.servable import Servable, Signature, TensorSpec
from agent.serving.tensors import STRING

SERVER_NAME = "inference-agent"
# The HTTP binary tensor extension is the only optional part of the protocol served.
EXTENSIONS = ("binary_tensor_data",)
# The same bounds as TF Serving's API (one home: agent/limits.py).
MAX_INPUTS = limits.MAX_INPUTS
MAX_RANK = limits.MAX_TENSOR_RANK
MAX_ELEMENTS = limits.MAX_TENSOR_ELEMENTS
_INT64_MAX = (1 << 63) - 1

DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": STRING,
}
_NAMES = {dtype: name for name, dtype in DATATYPES.items() if name != "BYTES"}


@dataclass(frozen=True)
class Tensor:
    """One input or output tensor: its elements as an array of the datatype, in the shape."""

    name: str
    datatype: str
    array: np.ndarray

    @property
    def shape(self) -> list[int]:
        """The shape as the protocol writes it."""
        return [int(d) for d in self.array.shape]


@dataclass(frozen=True)
class TensorMetadata:
    """An input or output as model metadata describes it (-1 for a dimension of any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelMetadata:
    """A model's metadata: its ready versions, runtime and the default signature's tensors."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(frozen=True)
class InferResult:
    """A servable's answer to one infer request."""

    model_name: str
    model_version: str
    outputs: list[Tensor]


def datatype_name(dtype: np.dtype) -> str:
    """The protocol's datatype of a numpy dtype (text and bytes are BYTES)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    name = _NAMES.get(dtype)
    if name is None:
        raise invalid_argument(f"tensor element type {dtype} has no Open Inference Protocol datatype")
    return name


def numpy_dtype(datatype: Any, where: str) -> np.dtype:
    """The numpy dtype of a protocol datatype; INVALID_ARGUMENT for an unknown one."""
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise invalid_argument(f"{where}: unsupported datatype {_short(datatype)}; expected one of {', '.join(DATATYPES)}")
    return dtype


def check_shape(shape: Any, where: str) -> tuple[int, ...]:
    """A declared shape as a tuple; INVALID_ARGUMENT unless it is a list of at most MAX_RANK
    non-negative integers with at most MAX_ELEMENTS elements in all."""
    if not isinstance(shape, (list, tuple)) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise invalid_argument(f"{where}: shape must be a list of integers, got {_short(shape)}")
    if len(shape) > MAX_RANK:
        raise invalid_argument(f"{where}: shape has rank {len(shape)}, more than the limit of {MAX_RANK}")
    if any(d < 0 for d in shape):
        raise invalid_argument(f"{where}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise invalid_argument(f"{where}: shape {list(shape)} has {count} elements, more than the limit of {MAX_ELEMENTS}")
    return tuple(shape)


def check_input_count(count: int) -> None:
    """INVALID_ARGUMENT for a request without inputs or with more than MAX_INPUTS."""
    if count == 0:
        raise invalid_argument("request has no inputs")
    if count > MAX_INPUTS:
        raise invalid_argument(f"request has {count} inputs; at most {MAX_INPUTS} are accepted")


def _short(value: Any, limit: int = 80) -> str:
    text = orjson.dumps(value, default=repr).decode()
    return text if len(text) <= limit else text[:limit] + "..."


def _flatten(data: Any, rank: int, where: str) -> list:
    """The leaves of `data` (flat, or nested lists as deep as the shape's rank) in row-major order."""
    items = data if isinstance(data, list) else [data]
    for _ in range(rank):
        nested = [isinstance(v, list) for v in items]
        if not any(nested):
            return items
        if not all(nested):
            raise invalid_argument(f"{where}: data mixes lists and values at the same level")
        items = [leaf for v in items for leaf in v]
    if any(isinstance(v, list) for v in items):
        raise invalid_argument(f"{where}: data is nested deeper than the shape's rank {rank}")
    return items


def from_json(name: Any, datatype: Any, shape: Any, data: Any) -> Tensor:
    """An input tensor from its JSON form; its data must hold exactly the shape's elements."""
    if not isinstance(name, str) or not name:
        raise invalid_argument("every input needs a 'name' string")
    where = f"input '{name}'"
    dtype = numpy_dtype(datatype, where)
    shape = check_shape(shape, where)
    values = _flatten(data, len(shape), where)
    count = math.prod(shape)
    if len(values) != count:
        raise invalid_argument(f"{where}: shape {list(shape)} needs {count} elements, data has {len(values)}")
    if count == 0:
        return Tensor(name, datatype, np.empty(shape, dtype=dtype))
    # The shared JSON decoder checks element types and integer ranges against the dtype;
    # it reads text as strings whatever the dtype, which a numeric datatype refuses here.
    array = rest_codec.to_array(values, TensorSpec(name, dtype, None), name)
    if array.dtype != dtype:
        raise invalid_argument(f"{where}: {datatype} data must be numbers{' or booleans' if datatype == 'BOOL' else ''}")
    return Tensor(name, datatype, array.reshape(shape))


def from_raw(name: Any, datatype: Any, shape: Any, raw: bytes) -> Tensor:
    """An input tensor from raw little-endian bytes (BYTES: each element after a 4-byte length)."""
    if not isinstance(name, str) or not name:
        raise invalid_argument("every input needs a 'name' string")
    where = f"input '{name}'"
    dtype = numpy_dtype(datatype, where)
    shape = check_shape(shape, where)
    count = math.prod(shape)
    if datatype == "BYTES":
        return Tensor(name, datatype, split_bytes(raw, count, where).reshape(shape))
    if len(raw) != count * dtype.itemsize:
        raise invalid_argument(
            f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, {len(raw)} were sent"
        )
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    return Tensor(name, datatype, array.reshape(shape))


def split_bytes(raw: bytes, count: int, where: str) -> np.ndarray:
    """`count` length-prefixed elements of a raw BYTES tensor, as an object array of bytes."""
    out = np.empty(count, dtype=STRING)
    view = memoryview(raw)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise invalid_argument(f"{where}: raw BYTES data ends before element {i} of {count}")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise invalid_argument(f"{where}: raw BYTES element {i} declares {size} bytes, fewer remain")
        out[i] = bytes(view[offset : offset + size])
        offset += size
    if offset != len(raw):
        raise invalid_argument(f"{where}: raw BYTES data has {len(raw) - offset} bytes after its {count} elements")
    return out


def to_raw(array: np.ndarray) -> bytes:
    """An output's elements as raw bytes: little-endian, BYTES length-prefixed."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        parts = []
        for v in array.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts += [struct.pack("<I", len(b)), b]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def json_data(array: np.ndarray, name: str) -> Any:
    """An output's elements, flat in row-major order, ready for orjson."""
    flat = np.asarray(array).reshape(-1)
    if flat.dtype.kind in "OSU":
        try:
            return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
        except UnicodeDecodeError:
            raise invalid_argument(f"output '{name}' holds bytes that are not UTF-8 text; request it as binary data") from None
    if flat.dtype == np.float16:
        flat = flat.astype(np.float32)
    # orjson writes numpy's canonical scalar types only (int64 may come as longlong).
    return np.ascontiguousarray(flat).astype(np.dtype(flat.dtype.str), copy=False)


# A version label as the agent's model.version.labels allows it (agent/modelspec.py).
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")


def parse_version(version: Any) -> tuple[int | None, str | None]:
    """A request's version string as (number, label): '' for the default version, a
    number, or a version label (TF Serving's labels: `stable`, `canary`, ...);
    INVALID_ARGUMENT otherwise."""
    if version in ("", None):
        return None, None
    if isinstance(version, str) and version.isascii() and version.isdigit() and int(version) <= _INT64_MAX:
        return int(version), None
    if isinstance(version, str) and _LABEL.fullmatch(version):
        return None, version
    raise invalid_argument(f"model version must be a non-negative integer or a version label, got {_short(version)}")


def servable(manager: ModelManager, name: str, version: str, *, infer: bool = False) -> Servable:
    """The servable a request names (the default one when version is empty, see
    ModelManager.servable; `infer` for an inference request); TF Serving's errors otherwise."""
    if not name:
        raise invalid_argument("missing model name")
    number, label = parse_version(version)
    if label is not None and label not in manager.labels(name):
        raise invalid_argument(f"model version must be a non-negative integer or a version label of {_short(name)}, "
                               f"got {_short(version)}")
    return manager.servable(name, number, label, infer=infer)


def _signature(servable: Servable) -> Signature:
    signature = inference.signature_of(servable, "")
    if signature.takes_examples:
        raise invalid_argument(f"model {servable.name} takes tf.Examples only; use TF Serving's classify or regress API")
    return signature


def _metadata_of(spec_items) -> tuple[TensorMetadata, ...]:
    out = []
    for alias, spec in spec_items:
        # A tensor of any rank has no v2 shape; [-1] says "any length" at least.
        shape = (-1,) if spec.shape is None else tuple(-1 if d is None else int(d) for d in spec.shape)
        out.append(TensorMetadata(alias, datatype_name(spec.dtype), shape))
    return tuple(out)


def model_metadata(manager: ModelManager, name: str, version: str) -> ModelMetadata:
    """The metadata of a model (of one version when given)."""
    chosen = servable(manager, name, version)
    ready = [s.version for s in manager.status(name) if s.state == AVAILABLE]
    signature = _signature(chosen)
    return ModelMetadata(
        name=chosen.name,
        versions=tuple(str(v) for v in sorted(ready)),
        platform=chosen.runtime,
        inputs=_metadata_of(signature.inputs.items()),
        outputs=_metadata_of(signature.outputs.items()),
    )


def model_ready(manager: ModelManager, name: str, version: str) -> bool:
    """True when the model (or the given version) has a servable ready to infer."""
    try:
        servable(manager, name, version)
    except ServingError:
        return False
    return True


def server_ready(manager: ModelManager) -> bool:
    """True when every configured model has a version ready to infer."""
    return all(model_ready(manager, c.name, "") for c in manager.configs)


def unready_models(manager: ModelManager) -> list[str]:
    """Configured models with no version ready (empty when the server is ready)."""
    return [c.name for c in manager.configs if not model_ready(manager, c.name, "")]


def infer(servable: Servable, inputs: Sequence[Tensor], outputs: Sequence[str]) -> InferResult:
    """Run the default signature on the inputs; returns the requested outputs (all when none)."""
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise invalid_argument(f"inputs named more than once: {sorted({n for n in names if names.count(n) > 1})}")
    if len(set(outputs)) != len(outputs):
        raise invalid_argument("outputs requested more than once")
    signature = _signature(servable)
    results = inference.predict(servable, signature, {t.name: t.array for t in inputs}, list(outputs))
    tensors = []
    for alias, array in results.items():
        array = np.asarray(array)
        tensors.append(Tensor(alias, datatype_name(array.dtype), array))
    return InferResult(servable.name, str(servable.version), tensors)


def server_version() -> str:
    """This server's version (the agent's)."""
    return agent.__version__

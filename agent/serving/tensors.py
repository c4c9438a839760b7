"""TensorProto <-> numpy, following TensorFlow's wire conventions: values come either as
raw little-endian bytes in tensor_content or in the dtype's typed *_val field, and a
typed field shorter than the shape is padded with its last value."""

from __future__ import annotations

import numpy as np

from agent.serving import limits
from agent.serving.errors import invalid_argument
from agent.serving.protos import tensor_pb2, tensor_shape_pb2
from agent.serving.protos import types_pb2 as t

# Strings travel as numpy object arrays of bytes.
STRING = np.dtype(object)

NUMPY_DTYPES: dict[int, np.dtype] = {
    t.DT_FLOAT: np.dtype(np.float32),
    t.DT_DOUBLE: np.dtype(np.float64),
    t.DT_HALF: np.dtype(np.float16),
    t.DT_INT8: np.dtype(np.int8),
    t.DT_INT16: np.dtype(np.int16),
    t.DT_INT32: np.dtype(np.int32),
    t.DT_INT64: np.dtype(np.int64),
    t.DT_UINT8: np.dtype(np.uint8),
    t.DT_UINT16: np.dtype(np.uint16),
    t.DT_UINT32: np.dtype(np.uint32),
    t.DT_UINT64: np.dtype(np.uint64),
    t.DT_BOOL: np.dtype(np.bool_),
    t.DT_COMPLEX64: np.dtype(np.complex64),
    t.DT_COMPLEX128: np.dtype(np.complex128),
    t.DT_STRING: STRING,
}
DATA_TYPES: dict[np.dtype, int] = {v: k for k, v in NUMPY_DTYPES.items()}

# The typed field each dtype's values travel in.
_VALUE_FIELD = {
    t.DT_FLOAT: "float_val",
    t.DT_DOUBLE: "double_val",
    t.DT_HALF: "half_val",
    t.DT_INT8: "int_val",
    t.DT_INT16: "int_val",
    t.DT_INT32: "int_val",
    t.DT_UINT8: "int_val",
    t.DT_UINT16: "int_val",
    t.DT_INT64: "int64_val",
    t.DT_UINT32: "uint32_val",
    t.DT_UINT64: "uint64_val",
    t.DT_BOOL: "bool_val",
    t.DT_COMPLEX64: "scomplex_val",
    t.DT_COMPLEX128: "dcomplex_val",
    t.DT_STRING: "string_val",
}


def dtype_name(data_type: int) -> str:
    """TensorFlow's short name of a DataType: float, int64, string ..."""
    name = t.DataType.Name(data_type) if data_type in t.DataType.values() else str(data_type)
    return name.removeprefix("DT_").lower()


def data_type_of(dtype: np.dtype) -> int:
    """The DataType of a numpy dtype (unicode and bytes arrays count as strings)."""
    dtype = np.dtype(dtype)
    if dtype.kind in ("U", "S", "O"):
        return t.DT_STRING
    try:
        return DATA_TYPES[dtype]
    except KeyError:
        raise invalid_argument(f"unsupported tensor element type {dtype}") from None


def shape_proto(shape: tuple[int | None, ...] | None) -> tensor_shape_pb2.TensorShapeProto:
    """A TensorShapeProto; None dims are -1 and a None shape is unknown rank."""
    proto = tensor_shape_pb2.TensorShapeProto()
    if shape is None:
        proto.unknown_rank = True
        return proto
    for size in shape:
        proto.dim.add(size=-1 if size is None else int(size))
    return proto


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "") -> np.ndarray:
    """The numpy array a TensorProto carries; INVALID_ARGUMENT when it is inconsistent."""
    where = f"input '{name}': " if name else ""
    dtype = NUMPY_DTYPES.get(proto.dtype)
    if dtype is None:
        raise invalid_argument(f"{where}unsupported tensor dtype {dtype_name(proto.dtype)}")
    if proto.tensor_shape.unknown_rank:
        raise invalid_argument(f"{where}tensor shape must be known")
    if len(proto.tensor_shape.dim) > limits.MAX_TENSOR_RANK:
        raise invalid_argument(
            f"{where}tensor rank {len(proto.tensor_shape.dim)} exceeds the limit of {limits.MAX_TENSOR_RANK}"
        )
    shape = tuple(int(d.size) for d in proto.tensor_shape.dim)
    if any(s < 0 for s in shape):
        raise invalid_argument(f"{where}negative dimension in tensor shape {list(shape)}")
    # Bound the allocation the declared shape asks for before any array is made.
    count = limits.check_shape(shape, where)
    if proto.tensor_content and proto.dtype != t.DT_STRING:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise invalid_argument(
                f"{where}tensor_content has {len(proto.tensor_content)} bytes, "
                f"shape {list(shape)} of {dtype_name(proto.dtype)} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    sent = len(getattr(proto, _VALUE_FIELD[proto.dtype]))
    if proto.dtype in (t.DT_COMPLEX64, t.DT_COMPLEX128):
        sent //= 2
    if sent > count:
        raise invalid_argument(f"{where}{sent} values given for shape {list(shape)}")
    fill = (count - sent) * (8 if dtype == STRING else dtype.itemsize)
    if fill > limits.MAX_FILL_BYTES:
        raise invalid_argument(
            f"{where}shape {list(shape)} declares {count} values but {sent} were sent; padding them would take "
            f"{fill} bytes, more than the limit of {limits.MAX_FILL_BYTES}"
        )
    try:
        values = _field_values(proto, dtype)
    except (OverflowError, ValueError) as e:
        raise invalid_argument(f"{where}values do not fit {dtype_name(proto.dtype)}: {e}") from None
    if len(values) == count:
        return values.reshape(shape)
    if len(values) > count:
        raise invalid_argument(f"{where}{len(values)} values given for shape {list(shape)}")
    if len(values) == 0:
        fill = b"" if dtype == STRING else 0
        return np.full(shape, fill, dtype=dtype)
    # TensorFlow pads a short value list with its last value (a one-value fill is common).
    padded = np.concatenate([values, np.repeat(values[-1:], count - len(values))])
    return padded.reshape(shape)


def _field_values(proto: tensor_pb2.TensorProto, dtype: np.dtype) -> np.ndarray:
    field = getattr(proto, _VALUE_FIELD[proto.dtype])
    if proto.dtype == t.DT_STRING:
        values = np.empty(len(field), dtype=STRING)
        values[:] = list(field)
        return values
    if proto.dtype == t.DT_HALF:
        return np.array(field, dtype=np.uint16).view(np.float16)
    if proto.dtype in (t.DT_COMPLEX64, t.DT_COMPLEX128):
        parts = np.array(field, dtype=np.float32 if proto.dtype == t.DT_COMPLEX64 else np.float64)
        return parts.view(dtype)
    return np.array(field, dtype=dtype)


def from_ndarray(array: np.ndarray, proto: tensor_pb2.TensorProto | None = None) -> tensor_pb2.TensorProto:
    """A TensorProto with the array's values in the dtype's typed field, as TF Serving answers."""
    proto = tensor_pb2.TensorProto() if proto is None else proto
    array = np.asarray(array)
    data_type = data_type_of(array.dtype)
    proto.dtype = data_type
    proto.tensor_shape.CopyFrom(shape_proto(array.shape))
    flat = array.reshape(-1)
    field = getattr(proto, _VALUE_FIELD[data_type])
    if data_type == t.DT_STRING:
        field.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif data_type == t.DT_HALF:
        field.extend(flat.view(np.uint16).tolist())
    elif data_type in (t.DT_COMPLEX64, t.DT_COMPLEX128):
        field.extend(flat.view(np.float32 if data_type == t.DT_COMPLEX64 else np.float64).tolist())
    else:
        field.extend(flat.tolist())
    return proto


def from_ndarray_content(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A TensorProto with numeric values packed in tensor_content (what fast clients send)."""
    array = np.asarray(array)
    data_type = data_type_of(array.dtype)
    if data_type == t.DT_STRING:
        return from_ndarray(array)
    proto = tensor_pb2.TensorProto(dtype=data_type, tensor_shape=shape_proto(array.shape))
    proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return proto

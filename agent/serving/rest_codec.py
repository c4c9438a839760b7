"""TF Serving's REST JSON: request bodies to numpy arrays and results back to JSON.

Predict takes the row form ({"instances": [...]}, one element per batch item, objects
for several named inputs) or the columnar form ({"inputs": value or {name: value}});
the answer mirrors it ({"predictions": [...]} or {"outputs": ...}). Binary values are
{"b64": "..."}; outputs whose alias ends in _bytes are answered that way too."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Mapping

import numpy as np
import orjson

from agent.serving import limits
from agent.serving.errors import invalid_argument
from agent.serving.servable import Signature, TensorSpec
from agent.serving.tensors import STRING

B64 = "b64"
_NUMPY_OPTS = orjson.OPT_SERIALIZE_NUMPY


def loads(body: bytes) -> dict:
    """The request's JSON object; INVALID_ARGUMENT for a parse error or a non-object.

    orjson >= 3.9.15 refuses nesting deeper than 1024 while parsing (older versions
    overflow the C stack); the tensor walks below stop at MAX_TENSOR_RANK."""
    if not body:
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise invalid_argument(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise invalid_argument(f"JSON Value: {_short(doc)} Is not object")
    return doc


def dumps(doc: Any) -> bytes:
    """JSON bytes of a response (numpy arrays serialized natively)."""
    return orjson.dumps(doc, option=_NUMPY_OPTS)


def error_body(message: str) -> bytes:
    """TF Serving's error body: {"error": "..."}."""
    return orjson.dumps({"error": message})


def _short(value: Any, limit: int = 200) -> str:
    try:
        text = orjson.dumps(value, default=str).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        return f"<{type(value).__name__} nested too deeply>"
    return text if len(text) <= limit else text[:limit] + "..."


def is_b64(value: Any) -> bool:
    """True for a {"b64": "<base64>"} object."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(B64), str)


def _decode_b64(value: dict) -> bytes:
    try:
        return base64.b64decode(value[B64], validate=False)
    except (binascii.Error, ValueError):
        raise invalid_argument("Unable to base64 decode") from None


def _first_leaf(value: Any) -> Any:
    while isinstance(value, list) and value:
        value = value[0]
    return value


def _strings(value: Any, alias: str, depth: int = 0) -> Any:
    if isinstance(value, list):
        if depth >= limits.MAX_TENSOR_RANK:
            raise invalid_argument(f"input '{alias}': tensor rank exceeds the limit of {limits.MAX_TENSOR_RANK}")
        return [_strings(v, alias, depth + 1) for v in value]
    if isinstance(value, str):
        return value.encode()
    if is_b64(value):
        return _decode_b64(value)
    raise invalid_argument(f"JSON Value: {_short(value)} is not of expected type: string (input '{alias}')")


def to_array(value: Any, spec: TensorSpec, alias: str) -> np.ndarray:
    """A JSON tensor (scalar or nested lists) as an array of the input's dtype.

    Strings and b64 objects become an object array of bytes; for an image input those
    are decoded later, everywhere else a string given for a number is an error."""
    # The first-element path gives the shape a dense tensor would have: bound it before
    # numpy materialises anything (ragged lists are refused by numpy below).
    limits.check_shape(_nested_shape(value), f"input '{alias}': ")
    leaf = _first_leaf(value)
    if spec.dtype == STRING or isinstance(leaf, (str, dict)):
        nested = _strings(value, alias)
        array = np.empty(_nested_shape(nested), dtype=STRING)
        try:
            array[...] = nested
        except ValueError:
            raise invalid_argument(f"input '{alias}': lists of different lengths (a tensor must be dense)") from None
        return array
    try:
        array = np.asarray(value)
    except ValueError:
        raise invalid_argument(f"input '{alias}': lists of different lengths (a tensor must be dense)") from None
    kind = array.dtype.kind
    wanted = spec.dtype.kind
    ok = (wanted == "f" and kind in "iuf") or (wanted in "iu" and kind in "iu") or (wanted == "b" and kind == "b")
    if not ok:
        if kind == "O":
            raise invalid_argument(f"input '{alias}': lists of different lengths or mixed types (a tensor must be dense)")
        raise invalid_argument(
            f"JSON Value: {_short(leaf)} Type: {type(leaf).__name__} is not of expected type: {spec.dtype} "
            f"(input '{alias}')"
        )
    if wanted in "iu" and array.size:
        info = np.iinfo(spec.dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid_argument(f"input '{alias}': value out of range for {spec.dtype}")
    return array.astype(spec.dtype, copy=False)


def _nested_shape(value: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(value, list) and len(shape) <= limits.MAX_TENSOR_RANK:
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def request_arrays(doc: Mapping, signature: Signature) -> tuple[dict[str, np.ndarray], str]:
    """Input arrays by alias from a predict request, and its form: 'row' or 'columnar'."""
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist")
    if has_instances:
        return _row_arrays(doc["instances"], signature), "row"
    if has_inputs:
        return _columnar_arrays(doc["inputs"], signature), "columnar"
    raise invalid_argument("Missing 'inputs' or 'instances' key")


def _row_arrays(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise invalid_argument("Excepting 'instances' to be an list/array")
    if not instances:
        raise invalid_argument("No values in 'instances' array")
    specs = signature.inputs
    named = isinstance(instances[0], dict) and not is_b64(instances[0])
    if not named:
        if len(specs) > 1:
            raise invalid_argument(
                "instances is a plain list, but expecting list of objects as multiple input tensors required "
                "as per tensorinfo_map"
            )
        alias, spec = next(iter(specs.items()))
        return {alias: to_array(instances, spec, alias)}
    columns: dict[str, list] = {alias: [] for alias in specs}
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or is_b64(item):
            raise invalid_argument(f"Expecting object but got list at item {i} of input list")
        if set(item) != set(specs):
            raise invalid_argument(
                f"Failed to process element: {i} of 'instances' list. JSON object: {_short(item)} "
                f"must only have keys: {','.join(sorted(specs))}"
            )
        for alias in specs:
            columns[alias].append(item[alias])
    return {alias: to_array(values, specs[alias], alias) for alias, values in columns.items()}


def _columnar_arrays(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    specs = signature.inputs
    if not isinstance(inputs, dict) or is_b64(inputs):
        if len(specs) > 1:
            raise invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        alias, spec = next(iter(specs.items()))
        return {alias: to_array(inputs, spec, alias)}
    arrays = {}
    for alias, spec in specs.items():
        if alias not in inputs:
            raise invalid_argument(f"Missing named input: {alias} in 'inputs' object.")
        arrays[alias] = to_array(inputs[alias], spec, alias)
    return arrays


def _json_ready(array: np.ndarray, alias: str) -> Any:
    """An output array in a form orjson writes as TF Serving would."""
    array = np.asarray(array)
    if array.dtype.kind in "OSU":
        as_b64 = alias.endswith("_bytes")
        return _string_values(array.tolist(), as_b64)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.dtype.kind == "c":
        raise invalid_argument(f"output '{alias}': complex values cannot be written as JSON")
    # orjson knows numpy's canonical scalar types only (int64 may come as longlong).
    canonical = np.dtype(array.dtype.str)
    return np.ascontiguousarray(array).view(canonical) if array.ndim else array.astype(canonical)[()]


def _string_values(value: Any, as_b64: bool) -> Any:
    if isinstance(value, list):
        return [_string_values(v, as_b64) for v in value]
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
    if not as_b64:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return {B64: base64.b64encode(raw).decode()}


def predict_response(outputs: Mapping[str, np.ndarray], form: str) -> bytes:
    """The predict answer in the request's form."""
    if form == "columnar":
        if len(outputs) == 1:
            ((alias, array),) = outputs.items()
            return dumps({"outputs": _json_ready(array, alias)})
        return dumps({"outputs": {alias: _json_ready(a, alias) for alias, a in outputs.items()}})
    batch = None
    for alias, array in outputs.items():
        if np.ndim(array) == 0:
            raise invalid_argument(f"Tensor name: {alias} has no shape information")
        size = np.shape(array)[0]
        if batch is not None and size != batch:
            raise invalid_argument(
                f"Tensor name: {alias} has inconsistent batch size: {size} expecting: {batch}"
            )
        batch = size
    if len(outputs) == 1:
        ((alias, array),) = outputs.items()
        return dumps({"predictions": _json_ready(array, alias)})
    ready = {alias: _json_ready(a, alias) for alias, a in outputs.items()}
    rows = [{alias: values[i] for alias, values in ready.items()} for i in range(batch or 0)]
    return dumps({"predictions": rows})


def _feature_values(value: Any, name: str) -> list:
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, bool):
            out.append(int(item))
        elif isinstance(item, (int, float)):
            out.append(item)
        elif isinstance(item, str):
            out.append(item.encode())
        elif is_b64(item):
            out.append(_decode_b64(item))
        else:
            raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {type(item).__name__}")
    kinds = {type(v) for v in out}
    if bytes in kinds and len(kinds) > 1:
        raise invalid_argument(f"Unexpected element type in feature: {name}")
    return out


def _example(value: Any) -> dict[str, list]:
    if not isinstance(value, dict):
        raise invalid_argument(f"Example must be JSON object but got JSON {type(value).__name__}")
    return {name: _feature_values(v, name) for name, v in value.items()}


def examples_request(doc: Mapping) -> tuple[list[dict[str, list]], dict[str, list] | None]:
    """The examples and optional context of a classify/regress request."""
    context = _example(doc["context"]) if "context" in doc else None
    if "examples" not in doc:
        raise invalid_argument("When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid_argument("Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid_argument("'examples' value is an empty array")
    return [_example(e) for e in examples], context


def signature_name(doc: Mapping) -> str:
    """The request's signature_name ('' for the default)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(
            f"JSON Value: {_short(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name

"""TF1-era SavedModels (Estimator / SavedModelBuilder exports) as one OpenVINO model per signature.

How the loader calls it: for a SavedModel whose MetaGraphDef has no TF2 object graph
(`is_tf1(read_meta_graph(dir))`), `load_tf1_signatures(dir, core)` gives each servable
signature's `openvino.Model` (ports named as in `Tf1Signature.inputs/outputs`); for
Classify/Regress, `Tf1Signature.parse_examples` makes the feeds from decoded tf.Examples
(Predict on the serialized-examples input: `Tf1Signature.feeds`).

Why: such a SavedModel holds one graph for all its signatures, with variables in a
checkpoint, and its classify/regress signatures parse serialized tf.Examples inside the
graph (ParseExample). OpenVINO's TensorFlow frontend refuses that graph as a whole. So each
signature's graph is pruned to the nodes its outputs need, cut at the signature's inputs
(each becomes a Placeholder) and just below every ParseExample/ParseExampleV2 it uses (each
parsed dense feature becomes a Placeholder); the pruned graph is written as a
one-signature SavedModel beside the original variables (symlinked), which OpenVINO's
TensorFlow frontend reads, restoring the variables from the checkpoint itself. The server parses tf.Examples with the
signature's ExampleParser: TensorFlow's ParseExample semantics for dense features (fixed
shapes, defaults, dtype checks, TensorFlow's error messages).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from agent.serving.errors import invalid_argument
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.protos import example_pb2, graph_pb2, meta_graph_pb2, saved_model_pb2, tensor_shape_pb2
from agent.serving.protos import types_pb2 as t
from agent.serving.servable import LoadError
from agent.serving.tensors import NUMPY_DTYPES, STRING, dtype_name, to_ndarray

SAVED_MODEL_PB = "saved_model.pb"
VARIABLES_DIR = "variables"
SERVE_TAG = "serve"
# saved_model.pb of real models is MBs (graph + function library); refuse absurd files.
MAX_SAVED_MODEL_BYTES = 1 << 30
PARSE_OPS = ("ParseExample", "ParseExampleV2")
# Names of the nodes this module adds to a pruned graph; made unique against the graph's own.
_CUT_PREFIX = "tf1_serving_cut"
_OUT_PREFIX = "tf1_serving_output"

# One tf.Example as feature name -> its values, as the REST and gRPC layers decode them.
Features = Mapping[str, Sequence]

_FEATURE_DTYPES = {t.DT_FLOAT: np.dtype(np.float32), t.DT_INT64: np.dtype(np.int64), t.DT_STRING: STRING}
# The tf.Example value list each feature dtype is read from, and TensorFlow's name for it.
_KIND = {t.DT_FLOAT: "float_list", t.DT_INT64: "int64_list", t.DT_STRING: "bytes_list"}
_KIND_NAME = {"float_list": "float", "int64_list": "int64", "bytes_list": "string"}


class Unservable(Exception):
    """Why one signature cannot be served (the load of the others goes on)."""


@dataclass(frozen=True)
class DenseFeature:
    """One FixedLenFeature of a ParseExample: what a tf.Example must (or may) hold."""

    key: str
    data_type: int  # DT_FLOAT, DT_INT64 or DT_STRING
    shape: tuple[int, ...]  # per example
    default: np.ndarray | None  # None: the feature is required
    port: str | None  # the model input it feeds; None when the signature's outputs don't use it
    tensor: str | None = None  # the ParseExample output it stands for ("node:k"), when used


@dataclass(frozen=True)
class ExampleParser:
    """Serialized tf.Examples (or their decoded features) -> the model's feeds, as ParseExample would."""

    features: tuple[DenseFeature, ...]

    def parse_serialized(self, blobs: Sequence) -> dict[str, np.ndarray]:
        """Feeds from serialized tf.Example protos (bytes); INVALID_ARGUMENT on a bad one."""
        examples = []
        for i, blob in enumerate(blobs):
            try:
                data = blob if isinstance(blob, bytes) else str(blob).encode()
                examples.append(example_pb2.Example.FromString(data))
            except Exception:
                raise invalid_argument(f"Could not parse example input, value: element {i}") from None
        rows = [{k: (f.WhichOneof("kind"), f) for k, f in ex.features.feature.items()} for ex in examples]
        return self._stack([{k: (kind, list(getattr(f, kind).value)) for k, (kind, f) in r.items() if kind} for r in rows])

    def feeds(self, examples: Sequence[Features], context: Features | None = None) -> dict[str, np.ndarray]:
        """Feeds from decoded tf.Examples (feature name -> values), each merged over `context`."""
        rows = []
        for i, example in enumerate(examples):
            row = {}
            for key, values in {**(context or {}), **example}.items():
                values = list(values) if isinstance(values, (list, tuple)) else [values]
                if not all(isinstance(v, (bytes, str, int, float, np.generic)) for v in values):
                    raise invalid_argument(f"Key: {key}, Index: {i}.  Feature values must be numbers or strings")
                row[key] = (_kind_of(values), values)
            rows.append(row)
        return self._stack(rows, lenient=True)

    def _stack(self, rows: list[dict[str, tuple[str, list]]], lenient: bool = False) -> dict[str, np.ndarray]:
        if not rows:
            raise invalid_argument("Input is empty.")
        out = {}
        for feature in self.features:
            want = _KIND[feature.data_type]
            dtype = _FEATURE_DTYPES[feature.data_type]
            size = math.prod(feature.shape)
            batch = np.empty((len(rows),) + feature.shape, dtype=dtype)
            for i, row in enumerate(rows):
                kind, values = row.get(feature.key, (None, []))
                if kind is None or (not values and kind != want):
                    if feature.default is None:
                        raise invalid_argument(
                            f"Feature: {feature.key} (data type: {dtype_name(feature.data_type)}) "
                            "is required but could not be found."
                        )
                    batch[i] = feature.default
                    continue
                # Decoded JSON cannot tell 1 from 1.0: integers may fill a float feature.
                if kind != want and not (lenient and kind == "int64_list" and want == "float_list"):
                    raise invalid_argument(
                        f"Key: {feature.key}, Index: {i}.  Data types don't match. "
                        f"Data type: {_KIND_NAME[kind]} but expected type: {_KIND_NAME[want]}"
                    )
                if len(values) != size:
                    raise invalid_argument(
                        f"Key: {feature.key}, Index: {i}.  Number of {_KIND_NAME[want]} values != expected.  "
                        f"Values size: {len(values)} but output shape: [{','.join(map(str, feature.shape))}]"
                    )
                if dtype == STRING:
                    batch[i].reshape(-1)[:] = [v if isinstance(v, bytes) else str(v).encode() for v in values]
                    continue
                try:
                    batch[i] = np.asarray(values, dtype=dtype).reshape(feature.shape)
                except (OverflowError, ValueError, TypeError):
                    raise invalid_argument(f"Key: {feature.key}, Index: {i}.  Values do not fit {_KIND_NAME[want]}") from None
            if feature.port is not None:
                out[feature.port] = batch
        return out


def _kind_of(values: list) -> str:
    """The tf.Example value list a decoded feature's values belong in."""
    if any(isinstance(v, (bytes, str)) for v in values):
        return "bytes_list"
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return "int64_list"
    return "float_list"


@dataclass(frozen=True)
class Port:
    """A model input or output: its port name in the OpenVINO model, element type and shape."""

    port: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None


@dataclass(frozen=True)
class Tf1Signature:
    """One servable signature of a TF1 SavedModel.

    `signature_def` is the SignatureDef as saved (what metadata reports). `inputs` maps each
    input alias the model takes directly to its port; `examples_input` is the alias of the
    serialized tf.Example input, whose feeds `parser` makes (None for plain signatures)."""

    name: str
    method_name: str
    signature_def: meta_graph_pb2.SignatureDef
    model: object  # openvino.Model
    inputs: Mapping[str, Port]
    outputs: Mapping[str, Port]
    examples_input: str | None = None
    parser: ExampleParser | None = None

    def parse_examples(self, examples: Sequence[Features], context: Features | None = None) -> dict[str, np.ndarray]:
        """Model feeds from decoded tf.Examples (Classify/Regress); a signature that takes none
        answers as TensorFlow does when fed serialized examples in place of its input."""
        if self.parser is None:
            info = next(iter(self.signature_def.inputs.values()), None)
            dtype = dtype_name(info.dtype) if info is not None else "nothing"
            raise invalid_argument(f"Expects arg[0] to be {dtype} but string is provided")
        return self.parser.feeds(examples, context)

    def feeds(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Model feeds from input arrays by alias (the examples input holds serialized tf.Examples)."""
        feeds = {}
        for alias, array in arrays.items():
            if alias == self.examples_input:
                feeds.update(self.parser.parse_serialized(np.asarray(array, dtype=object).reshape(-1)))
            elif alias in self.inputs:
                feeds[self.inputs[alias].port] = array
            else:
                raise invalid_argument(f"input '{alias}' is not an input of signature {self.name}")
        return feeds


@dataclass
class Tf1Load:
    """Every servable signature of a SavedModel, why each other one is not served, and all
    the SignatureDefs as saved (what TF Serving's metadata lists, served or not)."""

    signatures: dict[str, Tf1Signature] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    signature_defs: dict[str, meta_graph_pb2.SignatureDef] = field(default_factory=dict)


def read_meta_graph(export_dir: Path) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef tagged `serve` of the SavedModel in `export_dir`."""
    pb = Path(export_dir) / SAVED_MODEL_PB
    try:
        if pb.stat().st_size > MAX_SAVED_MODEL_BYTES:
            raise LoadError(f"{pb}: larger than {MAX_SAVED_MODEL_BYTES} bytes")
        saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    except OSError as e:
        raise LoadError(f"{pb}: {e.strerror or e}", codes.NOT_FOUND) from None
    except LoadError:
        raise
    except Exception as e:  # protobuf's DecodeError and friends
        raise LoadError(f"{pb}: not a SavedModel: {e}") from None
    for meta_graph in saved.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    tags = [list(m.meta_info_def.tags) for m in saved.meta_graphs]
    raise LoadError(f"{pb}: no MetaGraphDef tagged '{SERVE_TAG}' (tag sets: {tags})", codes.NOT_FOUND)


def is_tf1(meta_graph: meta_graph_pb2.MetaGraphDef) -> bool:
    """True for a TF1-era export: TF2's tf.saved_model.save always writes an object graph."""
    return not meta_graph.HasField("object_graph_def")


def load_tf1_signatures(export_dir: Path, core=None) -> Tf1Load:
    """One OpenVINO model per servable signature of the TF1 SavedModel in `export_dir`, read
    by `core` (an openvino.Core; a new one by default).

    Blocking (converts graphs): call it from an executor. LoadError when no signature can be served."""
    if core is None:
        from agent.serving import openvino_lib

        core = openvino_lib.load().Core()
    export_dir = Path(export_dir)
    meta_graph = read_meta_graph(export_dir)
    result = Tf1Load(signature_defs=dict(meta_graph.signature_def))
    converted: dict[bytes, object] = {}  # identical pruned graphs are converted once
    scratch = Path(tempfile.mkdtemp(prefix="savedmodel-tf1-"))
    try:
        for name in sorted(meta_graph.signature_def):
            signature_def = meta_graph.signature_def[name]
            try:
                pruned = _prune(meta_graph, name, signature_def)
                saved = _one_signature_saved_model(meta_graph, pruned)
                key = saved.SerializeToString(deterministic=True)
                if key not in converted:
                    converted[key] = _convert(core, export_dir, scratch / str(len(converted)), key)
                model = converted[key]
                _check_ports(model, pruned)
            except Unservable as e:
                result.refused[name] = str(e)
                continue
            result.signatures[name] = Tf1Signature(
                name=name,
                method_name=signature_def.method_name,
                signature_def=signature_def,
                model=model,
                inputs=pruned.inputs,
                outputs=pruned.outputs,
                examples_input=pruned.examples_input,
                parser=ExampleParser(tuple(pruned.features)) if pruned.examples_input else None,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not result.signatures:
        detail = "; ".join(f"{n}: {why}" for n, why in result.refused.items()) or "it has no signatures"
        raise LoadError(f"{export_dir}: no servable signature ({detail})", codes.FAILED_PRECONDITION)
    return result


# --- graph surgery ---------------------------------------------------------------------


@dataclass
class _Pruned:
    """A signature's own subgraph, with the ports of the model made from it."""

    graph: graph_pb2.GraphDef
    inputs: dict[str, Port]  # alias -> port, for inputs fed directly
    outputs: dict[str, Port]  # alias -> port
    placeholders: dict[str, str]  # port -> placeholder node
    output_nodes: dict[str, str]  # port -> Identity node
    examples_input: str | None = None
    features: list[DenseFeature] = field(default_factory=list)


def _split(ref: str) -> tuple[str, int]:
    """A node input or tensor name ("node", "node:1", "^node") as (node, output index)."""
    node, _, index = ref.lstrip("^").partition(":")
    return node, int(index) if index else 0


def _port_of(info: meta_graph_pb2.TensorInfo, port: str, what: str) -> Port:
    if info.WhichOneof("encoding") != "name":
        raise Unservable(f"{what} is a sparse or composite tensor, which is not served")
    dtype = NUMPY_DTYPES.get(info.dtype)
    if dtype is None:
        raise Unservable(f"{what} has unsupported dtype {dtype_name(info.dtype)}")
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else tuple(d.size if d.size >= 0 else None for d in shape.dim)
    return Port(port, dtype, dims)


def _prune(meta_graph: meta_graph_pb2.MetaGraphDef, name: str, signature: meta_graph_pb2.SignatureDef) -> _Pruned:
    """The subgraph the signature's outputs need, cut at its inputs and below ParseExample."""
    nodes = {n.name: n for n in meta_graph.graph_def.node}
    taken = set(nodes)

    def fresh(base: str) -> str:
        candidate, n = base, 0
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        return candidate

    graph = graph_pb2.GraphDef()
    graph.CopyFrom(meta_graph.graph_def)  # keeps versions and the function library
    del graph.node[:]
    pruned = _Pruned(graph, {}, {}, {}, {})
    cut: dict[tuple[str, int], str] = {}  # tensor -> the placeholder that replaces it
    ports: set[str] = set()

    def port_name(base: str) -> str:
        candidate, n = base, 0
        while candidate in ports:
            n += 1
            candidate = f"{base}_{n}"
        ports.add(candidate)
        return candidate

    def placeholder(port: str, data_type: int, shape) -> str:
        node = graph.node.add(name=fresh(f"{_CUT_PREFIX}/{len(pruned.placeholders)}"), op="Placeholder")
        node.attr["dtype"].type = data_type
        node.attr["shape"].shape.CopyFrom(shape)
        pruned.placeholders[port] = node.name
        return node.name

    # Output ports are named by the graph tensor, so signatures computing the same tensors
    # from the same inputs (classify and regress of one head) prune to one graph.
    by_tensor: dict[str, Port] = {}
    tensor_types: dict[str, int] = {}
    for alias, info in sorted(signature.outputs.items()):
        if info.name not in by_tensor:
            by_tensor[info.name] = _port_of(info, port_name(info.name), f"output '{alias}'")
            tensor_types[info.name] = info.dtype
        pruned.outputs[alias] = by_tensor[info.name]
    string_inputs = {}
    for alias, info in sorted(signature.inputs.items()):
        port = _port_of(info, alias, f"input '{alias}'")
        tensor = _split(info.name)
        if tensor[0] not in nodes:
            raise Unservable(f"input '{alias}' names tensor {info.name}, which is not in the graph")
        if info.dtype == t.DT_STRING:
            string_inputs[tensor] = alias
        port = Port(port_name(alias), port.dtype, port.shape)
        pruned.inputs[alias] = port
        cut[tensor] = placeholder(port.port, info.dtype, info.tensor_shape)

    parse_nodes: dict[str, int] = {}  # parse node -> index of its first dense feature in pruned.features
    kept: set[str] = set()
    stack: list[str] = []

    def use(ref: str) -> str:
        """The input string that reads tensor `ref` in the pruned graph (queueing what it needs)."""
        tensor = _split(ref)
        if tensor in cut:
            return cut[tensor]
        node = nodes.get(tensor[0])
        if node is None:
            raise Unservable(f"the graph reads tensor {ref}, which is not in the graph")
        if node.op in PARSE_OPS:
            return _cut_parse(node, tensor[1])
        if node.op == "Placeholder":
            raise Unservable(f"it needs placeholder {node.name}, which is not among its inputs")
        if node.name not in kept:
            kept.add(node.name)
            stack.append(node.name)
        return ref

    def _cut_parse(node, index: int) -> str:
        if node.name not in parse_nodes:
            source = _examples_source(nodes, node, string_inputs)
            if pruned.examples_input not in (None, source):
                raise Unservable("it parses tf.Examples from two different inputs")
            pruned.examples_input = source
            parse_nodes[node.name] = len(pruned.features)
            pruned.features.extend(_dense_features(nodes, node))
        first_dense, count = _dense_outputs(node)
        k = index - first_dense
        if not 0 <= k < count:
            raise Unservable(f"it uses sparse or ragged features of {node.name}, which are not served")
        at = parse_nodes[node.name] + k
        feature = pruned.features[at]
        if any(d < 0 for d in feature.shape):
            raise Unservable(f"feature '{feature.key}' has a variable length, which is not served")
        port = port_name(feature.key)
        pruned.features[at] = DenseFeature(
            feature.key, feature.data_type, feature.shape, feature.default, port, f"{node.name}:{index}"
        )
        shape = tensor_shape_pb2.TensorShapeProto()
        shape.dim.add(size=-1)
        for d in feature.shape:
            shape.dim.add(size=d)
        cut[(node.name, index)] = placeholder(port, feature.data_type, shape)
        return cut[(node.name, index)]

    for tensor, port in sorted(by_tensor.items()):
        out = graph.node.add(name=fresh(f"{_OUT_PREFIX}/{len(pruned.output_nodes)}"), op="Identity", input=[use(tensor)])
        out.attr["T"].type = tensor_types[tensor]
        pruned.output_nodes[port.port] = out.name
    while stack:
        original = nodes[stack.pop()]
        node = graph.node.add()
        node.CopyFrom(original)
        # Control dependencies (initializers, asserts, savers) are not part of serving.
        del node.input[:]
        node.input.extend(use(ref) for ref in original.input if not ref.startswith("^"))
    if pruned.examples_input is not None:
        # The server parses the tf.Examples: the serialized input leaves the graph.
        serialized = cut[_split(signature.inputs[pruned.examples_input].name)]
        if any(_split(ref)[0] == serialized for node in graph.node for ref in node.input):
            raise Unservable(f"it uses input '{pruned.examples_input}' other than by parsing its tf.Examples")
        graph.node.remove(next(n for n in graph.node if n.name == serialized))
        del pruned.placeholders[pruned.inputs.pop(pruned.examples_input).port]
    # Placeholders of inputs the outputs do not need stay: TF Serving requires every input too.
    return pruned


def _examples_source(nodes, parse_node, string_inputs: dict[tuple[str, int], str]) -> str:
    """The signature input alias the ParseExample's serialized tf.Examples come from."""
    seen, stack = set(), [parse_node.input[0]]
    while stack:
        tensor = _split(stack.pop())
        if tensor in string_inputs:
            return string_inputs[tensor]
        if tensor[0] in seen or tensor[0] not in nodes:
            continue
        seen.add(tensor[0])
        stack.extend(r for r in nodes[tensor[0]].input if not r.startswith("^"))
    raise Unservable(f"{parse_node.name} parses tf.Examples that are not one of its string inputs")


def _dense_outputs(node) -> tuple[int, int]:
    """(index of the first dense output, number of dense outputs) of a ParseExample node."""
    num_sparse = node.attr["Nsparse"].i if node.op == "ParseExample" else node.attr["num_sparse"].i
    return 3 * num_sparse, len(node.attr["Tdense"].list.type)


def _constant(nodes, ref: str, what: str, depth: int = 0) -> np.ndarray:
    """The value of a constant tensor: a Const, through Identity and Reshape (as parse_example writes defaults)."""
    node = nodes.get(_split(ref)[0])
    inputs = [r for r in node.input if not r.startswith("^")] if node is not None else []
    if node is not None and depth < 16:
        if node.op == "Identity" and inputs:
            return _constant(nodes, inputs[0], what, depth + 1)
        if node.op == "Reshape" and len(inputs) == 2:
            value = _constant(nodes, inputs[0], what, depth + 1)
            try:
                return value.reshape(_constant(nodes, inputs[1], what, depth + 1).astype(np.int64))
            except ValueError as e:
                raise Unservable(f"{what}: {e}") from None
    if node is None or node.op != "Const":
        raise Unservable(f"{what} is not a constant")
    try:
        return to_ndarray(node.attr["value"].tensor)
    except Exception as e:
        raise Unservable(f"{what}: {e}") from None


def _dense_features(nodes, node) -> list[DenseFeature]:
    """Every dense feature a ParseExample/ParseExampleV2 node parses (ports not yet assigned)."""
    types = list(node.attr["Tdense"].list.type)
    shapes = list(node.attr["dense_shapes"].list.shape)
    count = len(types)
    data_inputs = [r for r in node.input if not r.startswith("^")]
    if node.op == "ParseExample":
        first = 2 + node.attr["Nsparse"].i
        keys = [_constant(nodes, r, f"{node.name}'s dense key").reshape(-1)[0] for r in data_inputs[first : first + count]]
        defaults = data_inputs[first + count : first + 2 * count]
    else:
        keys = list(_constant(nodes, data_inputs[3], f"{node.name}'s dense keys").reshape(-1))
        defaults = data_inputs[5 : 5 + count]
    if len(keys) != count or len(defaults) != count or len(shapes) != count:
        raise Unservable(f"{node.name}: dense keys, defaults and shapes do not match")
    features = []
    for key, data_type, shape_proto, default_ref in zip(keys, types, shapes, defaults):
        key = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if data_type not in _FEATURE_DTYPES:
            raise Unservable(f"{node.name}: feature '{key}' has dtype {dtype_name(data_type)}")
        shape = () if shape_proto.unknown_rank else tuple(int(d.size) for d in shape_proto.dim)
        default = _constant(nodes, default_ref, f"{node.name}'s default for '{key}'")
        if default.size == 0:
            default = None
        elif all(d >= 0 for d in shape):
            if default.size not in (1, math.prod(shape)):
                raise Unservable(f"{node.name}: the default of feature '{key}' does not fit shape {list(shape)}")
            default = np.broadcast_to(default.reshape(-1) if default.size > 1 else default.reshape(()), shape)
            default = default.reshape(shape).astype(_FEATURE_DTYPES[data_type])
        features.append(DenseFeature(key, data_type, shape, default, None))
    return features


def _one_signature_saved_model(meta_graph: meta_graph_pb2.MetaGraphDef, pruned: _Pruned) -> saved_model_pb2.SavedModel:
    """A SavedModel holding only the pruned graph, its signature keyed by port names."""
    saved = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    out = saved.meta_graphs.add()
    out.meta_info_def.CopyFrom(meta_graph.meta_info_def)
    out.graph_def.CopyFrom(pruned.graph)
    signature = out.signature_def["serving_default"]
    signature.method_name = "tensorflow/serving/predict"
    types = {n.name: n.attr["dtype"].type for n in pruned.graph.node if n.op == "Placeholder"}
    shapes = {n.name: n.attr["shape"].shape for n in pruned.graph.node if n.op == "Placeholder"}
    for port, node in pruned.placeholders.items():
        info = signature.inputs[port]
        info.name = f"{node}:0"
        info.dtype = types[node]
        info.tensor_shape.CopyFrom(shapes[node])
    out_types = {n.name: n.attr["T"].type for n in pruned.graph.node if n.name in pruned.output_nodes.values()}
    for port, node in pruned.output_nodes.items():
        info = signature.outputs[port]
        info.name = f"{node}:0"
        info.dtype = out_types[node]
    return saved


def _convert(core, export_dir: Path, view: Path, saved_model: bytes):
    """OpenVINO's conversion of a one-signature SavedModel, reading the original variables.

    core.read_model runs the TensorFlow frontend directly: ~100x faster than
    openvino.convert_model's Python pipeline on small graphs (0.01 s against 0.8 s here)."""
    view.mkdir(parents=True)
    (view / SAVED_MODEL_PB).write_bytes(saved_model)
    variables = export_dir / VARIABLES_DIR
    if variables.is_dir():
        os.symlink(variables.resolve(), view / VARIABLES_DIR)
    try:
        return core.read_model(str(view))
    except Exception as e:  # OpenVINO raises its own RuntimeError subclasses
        raise Unservable(f"OpenVINO cannot convert it: {_openvino_reason(e)}") from None


def _openvino_reason(error: Exception) -> str:
    """The lines of an OpenVINO conversion error that say why (not where, nor the docs link)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    summary = [line.removeprefix("-- ") for line in lines if line.startswith("-- ")]
    if summary:
        return "; ".join(summary)
    boiler = ("Check '", "FrontEnd API failed", "To facilitate", "Summary:")
    reasons = [line for line in lines if not line.startswith(boiler)]
    return reasons[-1] if reasons else type(error).__name__


def _check_ports(model, pruned: _Pruned) -> None:
    names, strings = set(), set()
    for port in list(model.inputs) + list(model.outputs):
        names |= set(port.get_names())
        if port.get_element_type().get_type_name() == "string":
            strings.add(port.get_any_name())
    if strings:
        # The server's string tensors are numpy object arrays, which OpenVINO does not take.
        raise Unservable(f"string tensors ({', '.join(sorted(strings))}) are not run on OpenVINO")
    missing = sorted((set(pruned.placeholders) | set(pruned.output_nodes)) - names)
    if missing:
        raise Unservable(f"the converted graph lacks {', '.join(missing)}")

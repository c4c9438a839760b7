"""TensorFlow SavedModels without TensorFlow: signatures read from saved_model.pb with
the project's own protos, and one OpenVINO model per signature.

OpenVINO's TensorFlow frontend converts a SavedModel's `serving_default` signature (its
inputs and outputs named by the signature's keys). Every other signature is converted
from a view of the same directory whose saved_model.pb holds only that signature, as
`serving_default`; variables and assets are shared by symlink. `signature_models` is the
one place that turns a SavedModel into per-signature graphs: TF1-era exports (no object
graph) are pruned per signature by savedmodel_tf1 instead."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.serving import savedmodel_tf1
# One reader of saved_model.pb for both paths (TF2 direct conversion, TF1 pruning).
from agent.serving.savedmodel_tf1 import SAVED_MODEL_PB, read_meta_graph
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.protos import meta_graph_pb2, saved_model_pb2
from agent.serving.servable import DEFAULT_SIGNATURE, PREDICT, LoadError, Signature, TensorSpec
from agent.serving.tensors import NUMPY_DTYPES, STRING, dtype_name

# TF2's initializer entry: listed in metadata (as TF Serving does), never served.
INIT_OP_SIGNATURE = "__saved_model_init_op"


@dataclass(frozen=True)
class SignatureGraph:
    """One servable signature and the OpenVINO model that computes it."""

    signature: Signature
    model: object  # openvino.Model


def _spec(alias: str, info: meta_graph_pb2.TensorInfo, where: str) -> TensorSpec:
    if info.WhichOneof("encoding") != "name":
        raise ValueError(f"{where} tensor '{alias}' is not a dense tensor (sparse/composite tensors are not served)")
    dtype = NUMPY_DTYPES.get(info.dtype)
    if dtype is None:
        raise ValueError(f"{where} tensor '{alias}' has unsupported dtype {dtype_name(info.dtype)}")
    shape = info.tensor_shape
    dims = None if shape.unknown_rank else tuple(d.size if d.size >= 0 else None for d in shape.dim)
    # OpenVINO names a converted signature's ports by the signature's keys.
    return TensorSpec(alias, dtype, dims, tensor_name=info.name)


def signature_of(name: str, proto: meta_graph_pb2.SignatureDef) -> Signature:
    """A SignatureDef as a Signature; ValueError says why it cannot be served."""
    inputs = {alias: _spec(alias, info, "input") for alias, info in sorted(proto.inputs.items())}
    outputs = {alias: _spec(alias, info, "output") for alias, info in sorted(proto.outputs.items())}
    strings = sorted(a for a, spec in {**inputs, **outputs}.items() if spec.dtype == STRING)
    if strings:
        # OpenVINO's conversion of TF string ops was seen to give wrong answers (a
        # regex match over a batch came back as one scalar): refuse rather than mislead.
        raise ValueError(f"string tensors ({', '.join(strings)}) are not run on OpenVINO")
    return Signature(name, proto.method_name or PREDICT, inputs, outputs, graph=name)


def _single_signature_view(path: Path, meta_graph: meta_graph_pb2.MetaGraphDef, name: str, scratch: Path) -> Path:
    """A SavedModel directory whose only signature is `name`, renamed serving_default."""
    view = scratch / name.replace("/", "_")
    view.mkdir()
    saved = saved_model_pb2.SavedModel(saved_model_schema_version=1)
    mg = saved.meta_graphs.add()
    mg.CopyFrom(meta_graph)
    kept = meta_graph_pb2.SignatureDef()
    kept.CopyFrom(meta_graph.signature_def[name])
    mg.signature_def.clear()
    mg.signature_def[DEFAULT_SIGNATURE].CopyFrom(kept)
    (view / SAVED_MODEL_PB).write_bytes(saved.SerializeToString())
    for entry in os.listdir(path):
        if entry != SAVED_MODEL_PB:
            os.symlink(path / entry, view / entry)
    return view


def signature_models(core, path: Path) -> tuple[dict[str, SignatureGraph], dict[str, str], meta_graph_pb2.MetaGraphDef]:
    """OpenVINO models of every servable signature, why each other signature is not served,
    and the MetaGraphDef they come from."""
    meta_graph = read_meta_graph(path)
    if savedmodel_tf1.is_tf1(meta_graph):
        load = savedmodel_tf1.load_tf1_signatures(path, core)
        graphs = {n: SignatureGraph(_tf1_signature(s), s.model) for n, s in load.signatures.items()}
        return graphs, load.refused, meta_graph
    graphs: dict[str, SignatureGraph] = {}
    refused: dict[str, str] = {}
    scratch = Path(tempfile.mkdtemp(prefix="savedmodel-view-"))
    try:
        for name in sorted(meta_graph.signature_def):
            if name == INIT_OP_SIGNATURE:
                continue
            proto = meta_graph.signature_def[name]
            try:
                signature = signature_of(name, proto)
                source = path if name == DEFAULT_SIGNATURE else _single_signature_view(path, meta_graph, name, scratch)
                model = core.read_model(str(source))
            except ValueError as e:
                refused[name] = str(e)
                continue
            except RuntimeError as e:  # OpenVINO's conversion errors
                refused[name] = f"OpenVINO cannot convert it: {str(e).strip().splitlines()[-1]}"
                continue
            ports = {p.get_any_name() for p in model.inputs} | {p.get_any_name() for p in model.outputs}
            missing = sorted((set(signature.inputs) | set(signature.outputs)) - ports)
            if missing:
                refused[name] = f"the converted graph lacks {', '.join(missing)}"
                continue
            graphs[name] = SignatureGraph(signature, model)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not graphs:
        detail = "; ".join(f"{n}: {why}" for n, why in refused.items()) or "it has no signatures"
        raise LoadError(f"{path}: no servable signature ({detail})", codes.FAILED_PRECONDITION)
    return graphs, refused, meta_graph



def _tf1_signature(sig: savedmodel_tf1.Tf1Signature) -> Signature:
    """A TF1 signature as a Signature on its own graph; tf.Examples are parsed by its parser."""
    defs = sig.signature_def
    inputs = {a: TensorSpec(p.port, p.dtype, p.shape, tensor_name=defs.inputs[a].name) for a, p in sig.inputs.items()}
    outputs = {a: TensorSpec(p.port, p.dtype, p.shape, tensor_name=defs.outputs[a].name) for a, p in sig.outputs.items()}
    features = {}
    if sig.examples_input is not None:
        inputs[sig.examples_input] = TensorSpec(
            sig.examples_input, STRING, (None,), tensor_name=defs.inputs[sig.examples_input].name)
        features = {f.key: TensorSpec(f.port, NUMPY_DTYPES[f.data_type], (None,) + f.shape)
                    for f in sig.parser.features if f.port is not None}
    return Signature(sig.name, sig.method_name, inputs, outputs, features, graph=sig.name, parse=sig.parse_examples)

"""Predict, Classify, Regress and signature metadata on a loaded servable, independent
of the transport: REST and gRPC both convert their requests to numpy arrays (or lists of
tf.Example features) and call these. Blocking: run them in the inference executor."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from agent.serving.errors import invalid_argument
from agent.serving.images import decode_images, image_layout
from agent.serving.protos import example_pb2, get_model_metadata_pb2, meta_graph_pb2
from agent.serving.servable import (
    CLASSIFY,
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    REGRESS,
    Servable,
    Signature,
    TensorSpec,
)
from agent.serving.tensors import STRING, data_type_of, shape_proto

# One tf.Example as feature name -> its values (floats, ints or bytes).
Features = Mapping[str, Sequence]

_METHOD_WORD = {CLASSIFY: "classification", REGRESS: "regression"}


def _type_name(dtype: np.dtype) -> str:
    return "string" if dtype == STRING else str(np.dtype(dtype))


def _shape_text(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "[?]"
    return "[" + ",".join("-1" if d is None else str(d) for d in shape) + "]"


def signature_of(servable: Servable, name: str, method: str | None = None) -> Signature:
    """The named signature (default serving_default); INVALID_ARGUMENT if absent or of another method."""
    name = name or DEFAULT_SIGNATURE
    signature = servable.signatures.get(name)
    if signature is None:
        if name in servable.refused:
            raise invalid_argument(f'Serving signature name: "{name}" cannot be served: {servable.refused[name]}')
        raise invalid_argument(f'Serving signature name: "{name}" not found in signature def')
    if method is not None and signature.method_name != method:
        raise invalid_argument(
            f"Expected {_METHOD_WORD[method]} signature method_name to be {method}. Was: {signature.method_name}"
        )
    return signature


def _coerce(array: np.ndarray, spec: TensorSpec, alias: str) -> np.ndarray:
    """The array as the graph input wants it; INVALID_ARGUMENT on a wrong dtype or shape."""
    if array.dtype.kind in "OSU" and spec.dtype != STRING:
        if image_layout(spec) is not None:
            return decode_images(array, spec, alias)
        raise invalid_argument(f"input '{alias}': expects {_type_name(spec.dtype)} but string is provided")
    if spec.dtype == STRING:
        if array.dtype.kind not in "OSU":
            raise invalid_argument(f"input '{alias}': expects string but {_type_name(array.dtype)} is provided")
        return _text_array(array, alias)
    if array.dtype != spec.dtype:
        raise invalid_argument(
            f"input '{alias}': expects {_type_name(spec.dtype)} but {_type_name(array.dtype)} is provided"
        )
    if spec.shape is not None:
        fits = len(spec.shape) == array.ndim and all(d is None or d == s for d, s in zip(spec.shape, array.shape))
        if not fits:
            raise invalid_argument(
                f"input '{alias}': expects shape {_shape_text(spec.shape)} but got {_shape_text(array.shape)}"
            )
    return array


def _text_array(array: np.ndarray, alias: str) -> np.ndarray:
    """String elements as str: ONNX Runtime's string tensors hold UTF-8 text only."""
    out = np.empty(array.shape, dtype=STRING)
    try:
        out.reshape(-1)[:] = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]
    except UnicodeDecodeError:
        raise invalid_argument(f"input '{alias}': string tensors take UTF-8 text; got other bytes") from None
    return out


def _check_aliases(given: Sequence[str], expected: Sequence[str]) -> None:
    extra = sorted(set(given) - set(expected))
    missing = sorted(set(expected) - set(given))
    if extra or missing:
        raise invalid_argument(
            f"input size does not match signature: {len(given)}!={len(expected)} "
            f"len({{{','.join(sorted(given))}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(extra)}}}. Missing but required: {{{','.join(missing)}}}."
        )


def parse_examples(blobs: np.ndarray) -> list[dict[str, list]]:
    """Serialized tf.Example protos as feature dicts."""
    examples = []
    for i, blob in enumerate(blobs.reshape(-1)):
        try:
            example = example_pb2.Example.FromString(blob if isinstance(blob, bytes) else str(blob).encode())
        except Exception:
            raise invalid_argument(f"Could not parse example input, value: element {i}") from None
        examples.append(example_features(example))
    return examples


def example_features(example: example_pb2.Example) -> dict[str, list]:
    """A tf.Example proto as a feature dict."""
    out: dict[str, list] = {}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        out[name] = list(getattr(feature, kind).value) if kind else []
    return out


def example_feeds(signature: Signature, examples: Sequence[Features], context: Features | None = None) -> dict[str, np.ndarray]:
    """Graph feeds from a batch of tf.Examples: each feature stacked along a new batch axis."""
    if signature.parse is not None:
        return signature.parse(examples, context)
    if not examples:
        raise invalid_argument("Input is empty.")
    context = context or {}
    feeds = {}
    for feature, spec in signature.features.items():
        per_example = spec.shape[1:] if spec.shape is not None and all(d is not None for d in spec.shape[1:]) else None
        rows = []
        for i, ex in enumerate(examples):
            values = ex.get(feature, context.get(feature))
            if values is None:
                raise invalid_argument(
                    f"Feature: {feature} (data type: {_type_name(spec.dtype)}) is required but could not be found."
                )
            values = values if isinstance(values, (list, tuple)) else [values]
            if spec.dtype == STRING:
                row = _text_array(np.array(values, dtype=object), feature)
            else:
                row = np.asarray(values)
                if row.dtype.kind not in "iufb" or (spec.dtype.kind in "iu" and row.dtype.kind == "f"):
                    raise invalid_argument(f"Feature: {feature}, example {i}: expects {_type_name(spec.dtype)} values")
                row = row.astype(spec.dtype)
            if per_example is not None:
                if row.size != int(np.prod(per_example)):
                    raise invalid_argument(
                        f"Key: {feature}, Index: {i}. Number of values != expected. "
                        f"Values size: {row.size} but output shape: {list(per_example)}"
                    )
                row = row.reshape(per_example)
            rows.append(row)
        if len({r.shape for r in rows}) > 1:
            raise invalid_argument(f"Feature: {feature}: examples have different numbers of values")
        feeds[spec.name] = np.stack(rows)
    return feeds


def predict(
    servable: Servable, signature: Signature, arrays: Mapping[str, np.ndarray], output_filter: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Run a signature on input arrays (by alias); returns the outputs by alias."""
    _check_aliases(list(arrays), list(signature.inputs))
    if signature.takes_examples:
        feeds = example_feeds(signature, parse_examples(np.asarray(arrays[EXAMPLES_INPUT], dtype=object)))
    else:
        feeds = {signature.inputs[a].name: _coerce(np.asarray(v), signature.inputs[a], a) for a, v in arrays.items()}
    aliases = list(output_filter) or list(signature.outputs)
    for alias in aliases:
        if alias not in signature.outputs:
            raise invalid_argument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the set "
                f"{{{','.join(sorted(signature.outputs))}}}."
            )
    results = servable.run(feeds, [signature.outputs[a].name for a in aliases], signature.graph)
    return {a: results[signature.outputs[a].name] for a in aliases}


def _batch_output(result: np.ndarray, alias: str, batch: int) -> np.ndarray:
    if result.ndim == 1:
        result = result[:, None]
    if result.ndim != 2 or result.shape[0] != batch:
        raise invalid_argument(
            f"Expected output Tensor '{alias}' of shape [batch_size] or [batch_size, n] with batch_size {batch}, "
            f"got {_shape_text(result.shape)}"
        )
    return result


def classify(
    servable: Servable, signature_name: str, examples: Sequence[Features], context: Features | None = None
) -> list[list[tuple[str, float]]]:
    """Classify tf.Examples: per example, a list of (label, score)."""
    signature = signature_of(servable, signature_name, CLASSIFY)
    aliases = [a for a in ("classes", "scores") if a in signature.outputs]
    if not aliases:
        raise invalid_argument("Expected classification signature outputs 'classes' or 'scores'")
    feeds = example_feeds(signature, examples, context)
    results = servable.run(feeds, [signature.outputs[a].name for a in aliases], signature.graph)
    by_alias = dict(zip(aliases, (results[signature.outputs[a].name] for a in aliases)))
    batch = len(examples)
    scores = _batch_output(np.asarray(by_alias["scores"], dtype=np.float32), "scores", batch) if "scores" in by_alias else None
    classes = _batch_output(np.asarray(by_alias["classes"]), "classes", batch) if "classes" in by_alias else None
    if scores is not None and classes is not None and scores.shape != classes.shape:
        raise invalid_argument(f"classes {_shape_text(classes.shape)} and scores {_shape_text(scores.shape)} differ in shape")
    out = []
    for i in range(batch):
        width = (scores if scores is not None else classes).shape[1]
        row = []
        for j in range(width):
            label = classes[i, j] if classes is not None else ""
            if isinstance(label, bytes):
                label = label.decode("utf-8", "replace")
            row.append((str(label), float(scores[i, j]) if scores is not None else 0.0))
        out.append(row)
    return out


def regress(
    servable: Servable, signature_name: str, examples: Sequence[Features], context: Features | None = None
) -> list[float]:
    """Regress tf.Examples: one value per example."""
    signature = signature_of(servable, signature_name, REGRESS)
    if "outputs" not in signature.outputs:
        raise invalid_argument("Expected regression signature output 'outputs'")
    feeds = example_feeds(signature, examples, context)
    name = signature.outputs["outputs"].name
    values = _batch_output(np.asarray(servable.run(feeds, [name], signature.graph)[name], dtype=np.float32), "outputs", len(examples))
    if values.shape[1] != 1:
        raise invalid_argument(
            f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {_shape_text(values.shape)}"
        )
    return [float(v) for v in values[:, 0]]


def _tensor_info(spec: TensorSpec) -> meta_graph_pb2.TensorInfo:
    return meta_graph_pb2.TensorInfo(name=spec.tensor_name or spec.name, dtype=data_type_of(spec.dtype), tensor_shape=shape_proto(spec.shape))


def signature_def_map(servable: Servable) -> get_model_metadata_pb2.SignatureDefMap:
    """Every signature of the servable, as TF Serving's GetModelMetadata reports them."""
    out = get_model_metadata_pb2.SignatureDefMap()
    for name, proto in servable.signature_defs.items():
        out.signature_def[name].CopyFrom(proto)
    for name, signature in servable.signatures.items():
        if name in servable.signature_defs:
            continue
        sig = out.signature_def[name]
        sig.method_name = signature.method_name
        for alias, spec in signature.inputs.items():
            sig.inputs[alias].CopyFrom(_tensor_info(spec))
        for alias, spec in signature.outputs.items():
            sig.outputs[alias].CopyFrom(_tensor_info(spec))
    return out

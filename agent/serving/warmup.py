"""Warmup of a loaded version before it becomes AVAILABLE, as TF Serving does it.

With `assets.extra/tf_serving_warmup_requests` (a TFRecord file of PredictionLog protos,
TF Serving's format) its Predict, Classify and Regress requests are run, and a request
that fails fails the load, naming the record. Without it, one synthetic request per graph
is made from a signature (zeros of the input's dtype, unknown dimensions 1), at batch 1
and at the largest batch size, so the first real requests do not pay for first-run
allocation; a synthetic request the model rejects is only logged."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import numpy as np

import agent.log
from agent.serving import inference, tensors
from agent.serving.errors import ServingError
from agent.serving.protos import prediction_log_pb2
from agent.serving.servable import LoadError, Servable, Signature
from agent.serving.tensors import STRING

log = agent.log.get(__name__)

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
# TF Serving reads at most this many warmup records.
MAX_RECORDS = 1000
MAX_RECORD_BYTES = 64 << 20


def read_records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (length, its CRC, data, its CRC); CRCs are not checked:
    a corrupt record fails to parse as a PredictionLog instead."""
    with open(path, "rb") as f:
        for index in range(MAX_RECORDS + 1):
            header = f.read(12)
            if not header:
                return
            if index == MAX_RECORDS:
                raise LoadError(f"{path}: more than {MAX_RECORDS} warmup records")
            if len(header) < 12:
                raise LoadError(f"{path}: record {index} is truncated")
            (length,) = struct.unpack("<Q", header[:8])
            if length > MAX_RECORD_BYTES:
                raise LoadError(f"{path}: record {index} claims {length} bytes (limit {MAX_RECORD_BYTES})")
            data = f.read(length)
            if len(data) != length or len(f.read(4)) != 4:
                raise LoadError(f"{path}: record {index} is truncated")
            yield data


def _replay(servable: Servable, path: Path) -> int:
    count = 0
    for index, record in enumerate(read_records(path)):
        try:
            entry = prediction_log_pb2.PredictionLog.FromString(record)
        except Exception:
            raise LoadError(f"{path}: record {index} is not a PredictionLog") from None
        kind = entry.WhichOneof("log_type")
        try:
            if kind == "predict_log":
                request = entry.predict_log.request
                signature = inference.signature_of(servable, request.model_spec.signature_name)
                arrays = {a: tensors.to_ndarray(p, a) for a, p in request.inputs.items()}
                inference.predict(servable, signature, arrays, list(request.output_filter))
            elif kind in ("classify_log", "regress_log"):
                request = getattr(entry, kind).request
                examples = [inference.example_features(e) for e in _examples(request.input)]
                fn = inference.classify if kind == "classify_log" else inference.regress
                fn(servable, request.model_spec.signature_name, examples)
            else:
                raise LoadError(f"{path}: record {index}: unsupported warmup log type {kind}")
        except ServingError as e:
            raise LoadError(f"{path}: warmup record {index} failed: {e.message}") from None
        count += 1
    return count


def _examples(request_input):
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return list(request_input.example_list.examples)
    if kind == "example_list_with_context":
        return list(request_input.example_list_with_context.examples)
    return []


def _synthetic_inputs(signature: Signature, rows: int) -> dict[str, np.ndarray] | None:
    arrays = {}
    for alias, spec in signature.inputs.items():
        if spec.shape is None or spec.dtype == STRING:
            return None
        shape = tuple(rows if i == 0 and d is None else (d if d is not None else 1) for i, d in enumerate(spec.shape))
        arrays[alias] = np.zeros(shape, dtype=spec.dtype)
    return arrays


def warm_up(servable: Servable, batch_sizes: tuple[int, ...] = (1,)) -> str:
    """Warm a freshly loaded servable; returns what was done (for the log)."""
    path = servable.path / WARMUP_FILE
    if path.is_file():
        return f"{_replay(servable, path)} warmup requests"
    done = set()
    runs = 0
    for signature in servable.signatures.values():
        if signature.graph in done or signature.takes_examples:
            continue
        for rows in batch_sizes:
            arrays = _synthetic_inputs(signature, rows)
            if arrays is None:
                break
            try:
                inference.predict(servable, signature, arrays)
                runs += 1
            except ServingError as e:
                log.info("synthetic warmup request rejected", model=servable.name, version=servable.version,
                         signature=signature.name, error=e.message)
                break
        done.add(signature.graph)
    return f"{runs} synthetic warmup requests"

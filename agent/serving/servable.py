"""A loaded model version (a servable): its runtime session and its signatures.

ONNX and OpenVINO models carry no TF signatures. A model may declare them (JSON, see
`build_signatures`) in its ONNX metadata under SIGNATURES_KEY or in a SIGNATURES_FILE
beside the model; without that it gets one
`serving_default` predict signature with every graph input and output by name."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.tensors import STRING

SIGNATURES_KEY = "tensorflow_serving.signatures"
SIGNATURES_FILE = "signatures.json"
DEFAULT_SIGNATURE = "serving_default"
PREDICT = "tensorflow/serving/predict"
CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
# The alias of the serialized tf.Example input of classify/regress signatures.
EXAMPLES_INPUT = "inputs"


class LoadError(Exception):
    """A model version that cannot be loaded; code and message are shown in its status."""

    def __init__(self, message: str, code: int = codes.UNKNOWN):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TensorSpec:
    """A graph tensor: its name, element type and shape (None dims unknown; None shape unknown rank)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | None, ...] | None
    # The tensor's name in its source graph when that differs from `name` (a SavedModel's
    # "serving_default_x:0"): what metadata reports.
    tensor_name: str | None = None


@dataclass(frozen=True)
class Signature:
    """A named entry point: input and output aliases bound to graph tensors.

    Classify/regress signatures take serialized tf.Examples as their one input; each
    Example feature named in `features` feeds the graph input it maps to."""

    name: str
    method_name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    features: Mapping[str, TensorSpec] = field(default_factory=dict)
    # Which of the servable's graphs computes it ("" = its only graph).
    graph: str = ""
    # Makes the graph feeds from decoded tf.Examples (and context) when the model says how
    # (TF1 SavedModels: ParseExample's defaults and checks); else `features` are stacked.
    parse: Callable[..., dict[str, np.ndarray]] | None = field(default=None, compare=False)

    @property
    def takes_examples(self) -> bool:
        """True when the input is a batch of tf.Examples."""
        return bool(self.features)


class Servable:
    """One loaded version of one model; `run` is safe to call from several threads."""

    runtime = "none"

    def __init__(self, name: str, version: int, path: Path):
        self.name = name
        self.version = version
        self.path = path
        self.signatures: dict[str, Signature] = {}
        # What the runtime really computes in (fp32, bf16, fp16), shown in status and metrics.
        self.precision = "fp32"
        # The source model's own SignatureDef protos (SavedModels), reported as metadata.
        self.signature_defs: dict = {}
        # Signatures of the model that cannot be served: name -> why.
        self.refused: dict[str, str] = {}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], graph: str = "") -> dict[str, np.ndarray]:
        """Run a graph on `feeds` (graph input name -> array); returns the named outputs."""
        raise NotImplementedError

    def details(self) -> dict:
        """What runs this version, for status: runtime, precision, batching (None when off)."""
        return {"runtime": self.runtime, "precision": self.precision, "batching": None,
                "signatures_not_served": dict(self.refused)}

    def close(self) -> None:
        """Release what the runtime holds (batching threads); the default holds nothing."""

    def threads(self) -> list[threading.Thread]:
        """Its own threads that `close` ends; they must have ended before it is released."""
        return []


def build_signatures(
    inputs: Mapping[str, TensorSpec], outputs: Mapping[str, TensorSpec], declared: str | None, where: str
) -> dict[str, Signature]:
    """Signatures from the model's declared JSON, or the default one over the whole graph.

    The JSON maps a signature name to {"method_name": ..., "inputs": {alias: graph input},
    "outputs": {alias: graph output}}; classify/regress signatures give "features":
    {feature name: graph input} instead of "inputs"."""
    if not declared:
        return {DEFAULT_SIGNATURE: Signature(DEFAULT_SIGNATURE, PREDICT, dict(inputs), dict(outputs))}
    try:
        spec = json.loads(declared)
        if not isinstance(spec, dict):
            raise ValueError("must be a JSON object")
        signatures = {}
        for sig_name, sig in spec.items():
            method = sig.get("method_name", PREDICT)
            sig_outputs = {alias: outputs[graph] for alias, graph in sig["outputs"].items()}
            if "features" in sig:
                features = {feat: inputs[graph] for feat, graph in sig["features"].items()}
                examples = {EXAMPLES_INPUT: TensorSpec("tf_example", STRING, (None,))}
                signatures[sig_name] = Signature(sig_name, method, examples, sig_outputs, features)
            else:
                sig_inputs = {alias: inputs[graph] for alias, graph in sig["inputs"].items()}
                signatures[sig_name] = Signature(sig_name, method, sig_inputs, sig_outputs)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LoadError(f"{where}: bad {SIGNATURES_KEY} metadata: {e!r}") from None
    return signatures

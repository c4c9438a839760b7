"""OpenVINO servables for OpenVINO IR models (model.xml + model.bin); needs the optional
`openvino` extra. Signatures may be declared in signatures.json beside model.xml. Compiled models are shared; each concurrent run takes an infer request
from a small pool, since one infer request runs one inference at a time."""

from __future__ import annotations

import queue
from pathlib import Path

import numpy as np

from agent.serving.errors import invalid_argument
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.servable import SIGNATURES_FILE, LoadError, Servable, TensorSpec, build_signatures
from agent.serving.tensors import STRING

INSTALL_HINT = "OpenVINO IR models need OpenVINO: pip install 'inference-agent[openvino]'"
_POOL_SIZE = 4


def _spec(port) -> TensorSpec:
    name = port.get_any_name()
    element = port.get_element_type()
    dtype = STRING if element.get_type_name() == "string" else np.dtype(element.to_dtype())
    partial = port.get_partial_shape()
    if partial.rank.is_dynamic:
        return TensorSpec(name, dtype, None)
    dims = tuple(d.get_length() if d.is_static else None for d in partial)
    return TensorSpec(name, dtype, dims)


class OpenVinoServable(Servable):
    """A model version compiled by OpenVINO for the CPU."""

    runtime = "openvino"

    def __init__(self, name: str, version: int, path: Path, model_xml: Path, threads: int):
        super().__init__(name, version, path)
        try:
            import openvino
        except ImportError:
            raise LoadError(f"{model_xml}: {INSTALL_HINT}", codes.FAILED_PRECONDITION) from None
        core = openvino.Core()
        try:
            model = core.read_model(str(model_xml))
            self._compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads})
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise LoadError(f"{model_xml}: not a valid OpenVINO IR model: {e}") from None
        inputs = {s.name: s for s in map(_spec, self._compiled.inputs)}
        outputs = {s.name: s for s in map(_spec, self._compiled.outputs)}
        sidecar = path / SIGNATURES_FILE
        declared = sidecar.read_text() if sidecar.is_file() else None
        self.signatures = build_signatures(inputs, outputs, declared, str(model_xml))
        self._requests: queue.Queue = queue.Queue()
        for _ in range(_POOL_SIZE):
            self._requests.put(self._compiled.create_infer_request())

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        """Run one inference on a pooled infer request."""
        request = self._requests.get()
        try:
            results = request.infer(feeds)
            return {name: np.array(results[self._compiled.output(name)]) for name in output_names}
        except RuntimeError as e:
            raise invalid_argument(str(e).strip().splitlines()[0]) from None
        finally:
            self._requests.put(request)

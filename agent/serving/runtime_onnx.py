"""ONNX Runtime servables: one shared InferenceSession per model version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from agent.serving.errors import ServingError, internal, invalid_argument
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.servable import SIGNATURES_FILE, SIGNATURES_KEY, LoadError, Servable, TensorSpec, build_signatures
from agent.serving.tensors import STRING

_ORT_DTYPES = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": STRING,
}

_errors = ort.capi.onnxruntime_pybind11_state


def _spec(arg, where: str) -> TensorSpec:
    dtype = _ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise LoadError(f"{where}: tensor {arg.name!r} has unsupported type {arg.type}")
    shape = arg.shape
    # ONNX Runtime reports a missing shape (any rank) as []; it still checks real scalars itself.
    if not shape:
        return TensorSpec(arg.name, dtype, None)
    dims = tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
    return TensorSpec(arg.name, dtype, dims)


class OnnxServable(Servable):
    """A model version run by ONNX Runtime on the CPU."""

    runtime = "onnxruntime"

    def __init__(self, name: str, version: int, path: Path, model_file: Path, threads: int):
        super().__init__(name, version, path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for every bad file
            raise LoadError(f"{model_file}: not a valid ONNX model: {e}") from None
        inputs = {a.name: _spec(a, str(model_file)) for a in self._session.get_inputs()}
        outputs = {a.name: _spec(a, str(model_file)) for a in self._session.get_outputs()}
        sidecar = path / SIGNATURES_FILE
        if sidecar.is_file():
            declared = sidecar.read_text()
        else:
            declared = self._session.get_modelmeta().custom_metadata_map.get(SIGNATURES_KEY)
        self.signatures = build_signatures(inputs, outputs, declared, str(model_file))

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], graph: str = "") -> dict[str, np.ndarray]:
        """Run the session; ONNX Runtime's argument errors become INVALID_ARGUMENT."""
        try:
            results = self._session.run(output_names, feeds)
        except (_errors.InvalidArgument, _errors.RuntimeException, _errors.Fail) as e:
            # Bad shapes surface either as argument checks or as kernel failures.
            raise invalid_argument(_clean(str(e))) from None
        except _errors.NotImplemented as e:
            raise ServingError(codes.UNIMPLEMENTED, _clean(str(e))) from None
        except Exception as e:
            raise internal(_clean(str(e))) from None
        return dict(zip(output_names, results))


def _clean(message: str) -> str:
    # "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions ..." -> the reason.
    return message.rsplit(" : ", 1)[-1].strip()

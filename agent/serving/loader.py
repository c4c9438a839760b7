"""Picks the runtime for a version directory by what it holds and loads it."""

from __future__ import annotations

import os
from pathlib import Path

from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.servable import LoadError, Servable

ONNX_FILE = "model.onnx"
OPENVINO_XML = "model.xml"
OPENVINO_BIN = "model.bin"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def load_servable(name: str, version: int, path: Path, threads: int) -> Servable:
    """Load one model version: model.onnx -> ONNX Runtime, model.xml + model.bin -> OpenVINO.

    Blocking (reads and compiles the model): call it from an executor."""
    try:
        files = set(os.listdir(path))
    except OSError as e:
        raise LoadError(f"{path}: {e.strerror or e}", codes.NOT_FOUND) from None
    if ONNX_FILE in files:
        from agent.serving.runtime_onnx import OnnxServable

        return OnnxServable(name, version, path, path / ONNX_FILE, threads)
    if OPENVINO_XML in files:
        if OPENVINO_BIN not in files:
            raise LoadError(f"{path}: OpenVINO IR needs {OPENVINO_BIN} beside {OPENVINO_XML}")
        from agent.serving.runtime_openvino import OpenVinoServable

        return OpenVinoServable(name, version, path, path / OPENVINO_XML, threads)
    if files & set(SAVED_MODEL_FILES):
        raise LoadError(
            f"{path}: a TensorFlow SavedModel; the built-in server runs ONNX and OpenVINO models, "
            "serve SavedModels with serving.backend tfserving",
            codes.FAILED_PRECONDITION,
        )
    onnx_files = sorted(f for f in files if f.endswith(".onnx"))
    if len(onnx_files) == 1:
        from agent.serving.runtime_onnx import OnnxServable

        return OnnxServable(name, version, path, path / onnx_files[0], threads)
    if not files:
        raise LoadError(f"{path}: the version directory is empty", codes.NOT_FOUND)
    raise LoadError(f"{path}: no {ONNX_FILE}, OpenVINO IR ({OPENVINO_XML} + {OPENVINO_BIN}) or SavedModel found", codes.NOT_FOUND)

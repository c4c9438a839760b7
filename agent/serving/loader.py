"""Picks the runtime for a version directory by what it holds and loads it.

serving.runtime `auto` runs every format OpenVINO reads (SavedModel, ONNX, OpenVINO IR,
TFLite) on OpenVINO and falls back to ONNX Runtime for an ONNX model OpenVINO cannot
compile (e.g. inputs of unknown rank, string tensors); `openvino` and `onnxruntime`
force one runtime."""

from __future__ import annotations

import os
from pathlib import Path

import agent.log
from agent.serving.protos import error_codes_pb2 as codes
from agent.serving.runtime import AUTO, ONNXRUNTIME, OPENVINO, RuntimeOptions
from agent.serving.servable import LoadError, Servable

log = agent.log.get(__name__)

ONNX_FILE = "model.onnx"
OPENVINO_XML = "model.xml"
OPENVINO_BIN = "model.bin"
TFLITE_FILE = "model.tflite"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")


def _single(files: set[str], suffix: str) -> str | None:
    found = sorted(f for f in files if f.endswith(suffix))
    return found[0] if len(found) == 1 else None


def load_servable(name: str, version: int, path: Path, options: RuntimeOptions) -> Servable:
    """Load one model version on the runtime `options` ask for.

    Blocking (reads and compiles the model): call it from an executor."""
    try:
        files = set(os.listdir(path))
    except OSError as e:
        raise LoadError(f"{path}: {e.strerror or e}", codes.NOT_FOUND) from None
    if not files:
        raise LoadError(f"{path}: the version directory is empty", codes.NOT_FOUND)
    onnx_file = ONNX_FILE if ONNX_FILE in files else _single(files, ".onnx")
    if "saved_model.pb" in files:
        return _openvino_only(path, "a TensorFlow SavedModel", options, lambda ov: ov.OpenVinoServable.from_saved_model(name, version, path, options))
    if "saved_model.pbtxt" in files:
        raise LoadError(f"{path}: a text-format SavedModel (saved_model.pbtxt); save it as saved_model.pb", codes.FAILED_PRECONDITION)
    if onnx_file is not None:
        return _load_onnx(name, version, path, path / onnx_file, options)
    if OPENVINO_XML in files:
        if OPENVINO_BIN not in files:
            raise LoadError(f"{path}: OpenVINO IR needs {OPENVINO_BIN} beside {OPENVINO_XML}")
        return _openvino_only(path, "an OpenVINO IR model", options, lambda ov: ov.OpenVinoServable.from_file(name, version, path, path / OPENVINO_XML, options))
    tflite = TFLITE_FILE if TFLITE_FILE in files else _single(files, ".tflite")
    if tflite is not None:
        return _openvino_only(path, "a TFLite model", options, lambda ov: ov.OpenVinoServable.from_file(name, version, path, path / tflite, options))
    raise LoadError(
        f"{path}: no SavedModel (saved_model.pb), {ONNX_FILE}, OpenVINO IR ({OPENVINO_XML} + {OPENVINO_BIN}) "
        f"or {TFLITE_FILE} found",
        codes.NOT_FOUND,
    )


def _openvino_only(path: Path, what: str, options: RuntimeOptions, load) -> Servable:
    if options.runtime == ONNXRUNTIME:
        raise LoadError(
            f"{path}: {what} needs OpenVINO; serving.runtime is onnxruntime, which runs ONNX models only",
            codes.FAILED_PRECONDITION,
        )
    from agent.serving import runtime_openvino

    return load(runtime_openvino)


def _load_onnx(name: str, version: int, path: Path, model_file: Path, options: RuntimeOptions) -> Servable:
    from agent.serving.runtime_onnx import OnnxServable

    if options.runtime == ONNXRUNTIME:
        return OnnxServable(name, version, path, model_file, options.threads)
    from agent.serving.runtime_openvino import OpenVinoServable

    try:
        return OpenVinoServable.from_file(name, version, path, model_file, options)
    except LoadError as e:
        if options.runtime == OPENVINO:
            raise
        assert options.runtime == AUTO
        log.info("OpenVINO cannot run this model, using ONNX Runtime", model=name, version=version, reason=str(e))
        return OnnxServable(name, version, path, model_file, options.threads)

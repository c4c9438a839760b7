"""OpenVINO servables: ONNX, OpenVINO IR, TFLite and TensorFlow SavedModels compiled for
the CPU at the configured precision, one compiled model per graph.

A SavedModel has one graph per signature (see saved_model.py); a single-file model has one
graph whose signatures are declared in signatures.json beside it or, for ONNX, in its
metadata (as for ONNX Runtime). Each concurrent run takes an infer request from a pool:
one infer request runs one inference at a time. Compiled models are cached under the
server's compile cache directory, so a restart skips compilation."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import numpy as np

import agent.log
from agent.serving import openvino_lib
from agent.serving.errors import internal, invalid_argument
from agent.serving.runtime import RuntimeOptions
from agent.serving.servable import SIGNATURES_FILE, SIGNATURES_KEY, LoadError, Servable, TensorSpec, build_signatures
from agent.serving.tensors import STRING

log = agent.log.get(__name__)
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


_cores: dict[str | None, object] = {}
_cores_lock = threading.Lock()  # two first loads must not make (and race on) two Cores


def core_for(options: RuntimeOptions):
    """The OpenVINO Core for these options: one per cache directory (a Core is thread-safe)."""
    cache_dir = str(options.cache_dir) if options.cache_dir else None
    with _cores_lock:
        if cache_dir not in _cores:
            core = openvino_lib.load().Core()
            if cache_dir:
                Path(cache_dir).mkdir(parents=True, exist_ok=True)
                core.set_property({"CACHE_DIR": cache_dir})
            _cores[cache_dir] = core
        return _cores[cache_dir]


def compile_config(options: RuntimeOptions) -> dict:
    """compile_model properties: precision, and one stream over every thread (requests are
    batched, so one large inference at a time is the fastest use of the cores)."""
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": options.threads}
    if options.precision in _HINTS:
        config["INFERENCE_PRECISION_HINT"] = _HINTS[options.precision]
    return config


def _spec(port, known: set[str] = frozenset()) -> TensorSpec:
    # A port may carry several tensor names (fused Identity nodes); prefer the one the
    # source model declares as its input or output.
    names = port.get_names()
    declared = sorted(names & known)
    name = declared[0] if declared else port.get_any_name()
    element = port.get_element_type()
    dtype = STRING if element.get_type_name() == "string" else np.dtype(element.to_dtype())
    partial = port.get_partial_shape()
    if partial.rank.is_dynamic:
        return TensorSpec(name, dtype, None)
    dims = tuple(d.get_length() if d.is_static else None for d in partial)
    return TensorSpec(name, dtype, dims)


class _Graph:
    """One compiled model and its pool of infer requests."""

    def __init__(self, compiled):
        self.compiled = compiled
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        self._outputs = {name: p for p in compiled.outputs for name in p.get_names()}

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str]) -> dict[str, np.ndarray]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            results = request.infer(feeds, share_inputs=True)
            return {name: np.array(results[self._outputs[name]]) for name in output_names}
        finally:
            self._idle.put(request)


def _precision_of(compiled) -> str:
    hint = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    return _NAMES.get(hint, hint)


class OpenVinoServable(Servable):
    """A model version compiled by OpenVINO."""

    runtime = "openvino"

    def __init__(self, name: str, version: int, path: Path, graphs: dict[str, object], signatures, options: RuntimeOptions):
        """graphs: graph key -> openvino.Model; signatures: name -> Signature over those graphs."""
        super().__init__(name, version, path)
        core = core_for(options)
        config = compile_config(options)
        self._graphs: dict[str, _Graph] = {}
        for key, model in graphs.items():
            try:
                compiled = core.compile_model(model, options.device, config)
            except RuntimeError as e:
                raise LoadError(f"{path}: OpenVINO cannot compile it: {_first_line(e)}") from None
            self._graphs[key] = _Graph(compiled)
        self.signatures = dict(signatures)
        self.precision = _precision_of(next(iter(self._graphs.values())).compiled)

    @classmethod
    def from_file(cls, name: str, version: int, path: Path, model_file: Path, options: RuntimeOptions) -> "OpenVinoServable":
        """A single-file model (ONNX, IR model.xml, TFLite)."""
        core = core_for(options)
        try:
            model = core.read_model(str(model_file))
        except RuntimeError as e:
            raise LoadError(f"{model_file}: OpenVINO cannot read it: {_first_line(e)}") from None
        declared, io_names = _onnx_info(model_file)
        inputs = {s.name: s for s in (_spec(p, io_names) for p in model.inputs)}
        outputs = {s.name: s for s in (_spec(p, io_names) for p in model.outputs)}
        strings = sorted(n for n, spec in {**inputs, **outputs}.items() if spec.dtype == STRING)
        if strings:
            # The server's string tensors are numpy object arrays, which OpenVINO does not take.
            raise LoadError(f"{model_file}: string tensors ({', '.join(strings)}) are not run on OpenVINO")
        sidecar = path / SIGNATURES_FILE
        if sidecar.is_file():
            declared = sidecar.read_text()
        signatures = build_signatures(inputs, outputs, declared, str(model_file))
        return cls(name, version, path, {"": model}, signatures, options)

    @classmethod
    def from_saved_model(cls, name: str, version: int, path: Path, options: RuntimeOptions) -> "OpenVinoServable":
        """A TensorFlow SavedModel: one graph per signature."""
        from agent.serving import saved_model

        graphs, refused, meta_graph = saved_model.signature_models(core_for(options), path)
        signatures = {n: g.signature for n, g in graphs.items()}
        sidecar = path / SIGNATURES_FILE
        if sidecar.is_file() and saved_model.DEFAULT_SIGNATURE in graphs:
            # Extra signatures declared over the default graph (e.g. classify/regress over
            # its dense inputs): keyed by the converted graph's port names.
            default = graphs[saved_model.DEFAULT_SIGNATURE].model
            inputs = {s.name: s for s in map(_spec, default.inputs)}
            outputs = {s.name: s for s in map(_spec, default.outputs)}
            for sig_name, sig in build_signatures(inputs, outputs, sidecar.read_text(), str(sidecar)).items():
                if sig_name not in signatures:
                    signatures[sig_name] = _on_graph(sig, saved_model.DEFAULT_SIGNATURE)
        servable = cls(name, version, path, {n: g.model for n, g in graphs.items()}, signatures, options)
        servable.refused = refused
        # Metadata reports the SavedModel's own SignatureDefs, as TF Serving does.
        servable.signature_defs = dict(meta_graph.signature_def)
        for sig_name, why in refused.items():
            log.warning("signature not served", model=name, version=version, signature=sig_name, reason=why)
        return servable

    def run(self, feeds: dict[str, np.ndarray], output_names: list[str], graph: str = "") -> dict[str, np.ndarray]:
        """Run one inference of a graph on a pooled infer request."""
        try:
            return self._graphs[graph].run(feeds, output_names)
        except RuntimeError as e:
            raise invalid_argument(_first_line(e)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise internal(f"{type(e).__name__}: {e}") from None


def _on_graph(signature, graph: str):
    from dataclasses import replace

    return replace(signature, graph=graph)


def _onnx_info(model_file: Path) -> tuple[str | None, set[str]]:
    """An ONNX model's declared signatures JSON (if any) and its graph input/output names."""
    if model_file.suffix != ".onnx":
        return None, set()
    import onnx

    try:
        model = onnx.load(str(model_file), load_external_data=False)
    except Exception:  # OpenVINO read it; a metadata problem only loses declared signatures
        return None, set()
    names = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    return {p.key: p.value for p in model.metadata_props}.get(SIGNATURES_KEY), names


def _first_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    # OpenVINO prefixes "Exception from src/...:NN:" lines; the reason is the last one.
    reasons = [line for line in lines if not line.startswith("Exception from")]
    return (reasons or lines or [type(e).__name__])[-1]


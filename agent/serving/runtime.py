"""How the built-in server runs models: which runtime, at which precision, on how many
threads, with which compiled-model cache. One typed value passed from the command line
to the loader.

Device selection is CPU-only here (no accelerator on the nodes this was built on). An
Intel GPU would be OpenVINO device "GPU" (or "AUTO:GPU,CPU") in `RuntimeOptions.device`,
an NVIDIA GPU ONNX Runtime's CUDA execution provider; both stay behind `load_servable`
so they can be added and tested where such a device exists."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

AUTO = "auto"
OPENVINO = "openvino"
ONNXRUNTIME = "onnxruntime"
RUNTIMES = (AUTO, OPENVINO, ONNXRUNTIME)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class RuntimeOptions:
    """The runtime settings of every model version this server loads."""

    runtime: str = AUTO  # auto | openvino | onnxruntime
    precision: str = "auto"  # auto = the runtime's best on this CPU | fp32 | bf16 | fp16
    threads: int = 1  # intra-op threads per inference
    cache_dir: Path | None = None  # OpenVINO compiled-model cache; None disables it
    device: str = "CPU"

    def __post_init__(self):
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

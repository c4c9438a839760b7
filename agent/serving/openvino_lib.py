"""The openvino package, imported the one way the model server can use it safely."""

from __future__ import annotations

import sys
import threading
from types import ModuleType

_lock = threading.Lock()
_module: ModuleType | None = None


def load() -> ModuleType:
    """The openvino package, with its usage telemetry off and its numpy bridge set up once."""
    global _module
    with _lock:
        if _module is None:
            # `import openvino` imports its model converter, which sends a usage event to
            # Google Analytics from a forked child process unless the user opted out. A
            # server must neither call out nor fork behind the operator's back; without
            # its telemetry package OpenVINO falls back to its own no-op stub.
            sys.modules.setdefault("openvino_telemetry", None)
            import openvino

            # The bindings set up their numpy bridge on first use inside a C++ static
            # guard that then waits for the GIL, while a second thread holding the GIL
            # waits on that guard: two first loads at once froze the whole server. Set it
            # up here, under a Python lock, which a waiting thread holds without the GIL.
            openvino.Type.f32.to_dtype()
            _module = openvino
    return _module

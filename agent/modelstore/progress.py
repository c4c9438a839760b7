"""Progress of a running sync or push: one record, drawn by the CLI's progress bar.

Light on purpose (no boto3, no HTTP): `models push` and `sync` both import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Progress:
    """Where a running transfer is. phase: listing, downloading, uploading or done."""

    phase: str
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


ProgressCallback = Callable[[Progress], None]

"""Sampled request logging, off unless `--request_log_file` is given with a sample rate
above zero: a sampled inference request is written as one JSON line (time, API,
entrypoint, model, version, status, latency, and its input and output cut to
`max_bytes` each) to a file the agent rotates with the node's other logs.

Never secrets: headers and gRPC metadata (where credentials travel) are not logged, only
the request's own body or message. Writing is off the request path: lines go through a
bounded queue to one writer thread; past the bound they are dropped and counted."""

from __future__ import annotations

import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

import agent.log

log = agent.log.get(__name__)

QUEUE_LINES = 1024


def cut(data: Any, max_bytes: int) -> dict[str, Any]:
    """A request's input or output as logged: its text (a protobuf message as JSON) up to
    max_bytes, and its full size. A message far past the cap is not converted at all."""
    if isinstance(data, Message):
        size = data.ByteSize()
        if size > 16 * max_bytes:
            return {"bytes": size, "text": "", "truncated": True}
        data = json_format.MessageToJson(data, indent=None, preserving_proto_field_name=True)
    raw = data.encode() if isinstance(data, str) else bytes(data)
    text = raw[:max_bytes].decode("utf-8", "replace")
    return {"bytes": len(raw), "text": text, "truncated": len(raw) > max_bytes}


class RequestLog:
    """The sampled request log of one model server."""

    def __init__(self, path: Path, sample_rate: float, max_bytes: int):
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"the request log sample rate must be within 0 and 1, got {sample_rate}")
        if max_bytes < 1:
            raise ValueError(f"the request log size cap must be at least 1 byte, got {max_bytes}")
        self.path = path
        self.sample_rate = sample_rate
        self.max_bytes = max_bytes
        self.dropped = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_LINES)
        self._thread = threading.Thread(target=self._write, name="request-log", daemon=True)
        self._thread.start()

    def sampled(self) -> bool:
        """Whether to log the request about to be served (decided before any work)."""
        return self.sample_rate > 0 and random.random() < self.sample_rate

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one entry; dropped (and counted) when the writer is behind."""
        line = orjson.dumps({"time": time.time(), **entry}) + b"\n"
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        while True:
            line = self._queue.get()
            if line is None:
                return
            lines = [line]
            while len(lines) < 256:  # what is queued goes out in one write
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._append(lines)
                    return
                lines.append(more)
            self._append(lines)

    def _append(self, lines: list[bytes]) -> None:
        try:
            # Opened for each write, in append mode: the agent's copy-and-truncate rotation
            # of the logs directory keeps working, and a removed file is made again.
            with open(self.path, "ab") as f:
                f.write(b"".join(lines))
        except OSError as e:
            log.warning("request log not written", path=str(self.path), error=e.strerror or str(e), lines=len(lines))

    def close(self) -> None:
        """Write what is queued and stop the writer (blocking: call off the event loop)."""
        self._queue.put(None)
        self._thread.join(timeout=5)
        if self.dropped:
            log.warning("request log lines dropped: the writer was behind", dropped=self.dropped)

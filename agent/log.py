"""structlog setup: JSON lines in production, readable lines on a terminal, secrets redacted."""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from agent import limits

# Event keys whose values are secrets, wherever they appear in a log call.
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access[._]?key)", re.I)
REDACTED = "***"


def redact(value: Any, key: str = "") -> Any:
    """Return `value` with every secret-named field replaced by a mask, recursively."""
    if key and _SECRET_KEY.search(key) and value not in ("", None):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(_logger: Any, _name: str, event: dict) -> dict:
    return {k: (v if k == "event" else redact(v, k)) for k, v in event.items()}


class RepeatLimiter(logging.Filter):
    """Lets at most `burst` records of one kind (logger, level and message) through per
    `window` seconds; the next one let through says how many were suppressed. Keeps a
    flood of one error (a client sending garbage in a loop, a resource exhausted) from
    filling the disk while the first lines of it stay visible."""

    def __init__(self, burst: int = limits.LOG_REPEAT_BURST, window: float = limits.LOG_REPEAT_WINDOW,
                 clock=time.monotonic):
        super().__init__()
        self.burst = burst
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window start, records let through in it, records suppressed]
        self._seen: dict[tuple, list] = {}

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple:
        msg = record.msg
        if isinstance(msg, dict):  # a structlog event
            msg = msg.get("event")
        return record.name, record.levelno, str(msg)[:200]

    def filter(self, record: logging.LogRecord) -> bool:
        """True to emit the record."""
        if record.levelno < logging.WARNING:
            return True
        now = self._clock()
        with self._lock:
            if len(self._seen) > 1000:  # bounded memory: forget old kinds
                self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.window}
            # Each handler has its own limiter; the key is taken once, before any note changes the message.
            key = record.__dict__.setdefault("_repeat_key", self._key(record))
            entry = self._seen.setdefault(key, [now, 0, 0])
            if now - entry[0] >= self.window:
                suppressed = entry[2]
                entry[:] = [now, 0, 0]
                if suppressed and not getattr(record, "_repeat_noted", False):
                    record._repeat_noted = True
                    _note_suppressed(record, suppressed)
            if entry[1] >= self.burst:
                entry[2] += 1
                return False
            entry[1] += 1
            return True


def _note_suppressed(record: logging.LogRecord, count: int) -> None:
    if isinstance(record.msg, dict):
        record.msg = {**record.msg, "suppressed_repeats": count}
    else:
        record.msg = f"{record.msg} [{count} similar lines suppressed]"


# The rotation in force (set by `setup`), for the logs other processes write too.
_rotation = {"max_bytes": limits.LOG_MAX_BYTES, "backups": limits.LOG_BACKUPS}


def setup(level: str = "info", json: bool | None = None, log_file: Path | None = None,
          max_bytes: int = limits.LOG_MAX_BYTES, backups: int = limits.LOG_BACKUPS) -> None:
    """Configure structlog (and stdlib logging) once for the process."""
    _rotation.update(max_bytes=max_bytes, backups=backups)
    if json is None:
        json = not sys.stderr.isatty()
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=max_bytes, backupCount=backups))

    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso")],
    )
    root = logging.getLogger()
    root.handlers.clear()
    for h in handlers:
        h.setFormatter(formatter)
        h.addFilter(RepeatLimiter())
        root.addHandler(h)
    root.setLevel(level.upper())
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            _redact_processor,
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get(name: str) -> structlog.stdlib.BoundLogger:
    """A logger named for the module that owns it."""
    return structlog.get_logger(name)


def rotate_file(path: Path, max_bytes: int = limits.LOG_MAX_BYTES, backups: int = limits.LOG_BACKUPS) -> bool:
    """Rotate a log another process appends to, once it is over `max_bytes`: shift
    path.1..path.N, copy the live file to path.1 and truncate it in place (its writers
    keep their O_APPEND descriptors; lines written during the copy may be lost).
    Returns True when it rotated."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for i in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
    if backups > 0:
        shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as f:
        f.truncate(0)
    return True


def rotate_owned_logs(logs_dir: Path, max_bytes: int | None = None, backups: int | None = None,
                      skip: tuple[str, ...] = ("agent.log",)) -> list[str]:
    """Rotate every *.log in `logs_dir` (Envoy's, the model server's, cmd.log ...) that is
    too big; agent.log rotates itself. Returns the names rotated."""
    max_bytes = _rotation["max_bytes"] if max_bytes is None else max_bytes
    backups = _rotation["backups"] if backups is None else backups
    rotated = []
    try:
        entries = list(os.scandir(logs_dir))
    except FileNotFoundError:
        return rotated
    for entry in entries:
        if entry.name.endswith(".log") and entry.name not in skip and entry.is_file(follow_symlinks=False):
            if rotate_file(Path(entry.path), max_bytes, backups):
                rotated.append(entry.name)
    return rotated

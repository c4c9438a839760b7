"""The canary split: which version serves a request that names no version or label.

A model whose config has a `canary` label and which the traffic file lists sends
`percent` of those requests to that version and the rest to its `stable` label (or,
without one, to its newest version other than the canary). A model the file does not
list keeps TF Serving's rule (the newest version), so the server alone, without the
file, answers exactly as TF Serving does. The split is deterministic, not random: a running credit sends exactly
`percent` of every 100 requests to the canary (spread evenly, Bresenham-style), so a
node's share never drifts and a test can count it. The percentages come from the
traffic file (`--traffic_file`, JSON `{"canary_percent": {"model": 20}}`) that the agent
writes and the server's config poll rereads, so a change applies to the next request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import agent.log

log = agent.log.get(__name__)

CANARY = "canary"
STABLE = "stable"
MAX_TRAFFIC_FILE_BYTES = 1 << 20
# Response headers (REST) and initial metadata (gRPC) of an inference answer: the model
# and version that served it. Envoy's access log records them.
MODEL_HEADER = "x-model-name"
VERSION_HEADER = "x-model-version"


def served_by(servable) -> dict[str, str]:
    """The headers naming the model and version that answered an inference request."""
    return {MODEL_HEADER: servable.name, VERSION_HEADER: str(servable.version)}


async def send_served_by(context, servable) -> None:
    """Name the answering version to a gRPC caller, in initial metadata. Call it only on
    success: an error must stay a trailers-only answer, which Envoy can retry."""
    await context.send_initial_metadata(tuple(served_by(servable).items()))


class TrafficError(ValueError):
    """A traffic file that cannot be used; the message says where and why."""


def parse_traffic(text: str, where: str = "traffic file") -> dict[str, int]:
    """The canary percentage per model of a traffic file's text; TrafficError otherwise."""
    if len(text) > MAX_TRAFFIC_FILE_BYTES:
        raise TrafficError(f"{where}: larger than {MAX_TRAFFIC_FILE_BYTES} bytes")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise TrafficError(f"{where}: not JSON ({e})") from None
    percents = doc.get("canary_percent", {}) if isinstance(doc, dict) else None
    if not isinstance(percents, dict):
        raise TrafficError(f"{where}: canary_percent must map model names to percentages")
    out: dict[str, int] = {}
    for name, value in percents.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise TrafficError(f"{where}: canary_percent of {str(name)[:60]!r} must be an integer from 0 to 100, got {str(value)[:20]!r}")
        out[str(name)] = value
    return out


def read_traffic(path: Path) -> dict[str, int]:
    """The canary percentages in a traffic file; a missing file means no split."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise TrafficError(f"{path}: {e.strerror or e}") from None
    return parse_traffic(text, str(path))


class CanarySplit:
    """The canary percentage per model and the running credit that spreads it."""

    def __init__(self) -> None:
        self._percent: dict[str, int] = {}
        self._credit: dict[str, int] = {}

    def set(self, percents: Mapping[str, int]) -> None:
        """Take new percentages (the credit of an unchanged model carries on)."""
        if dict(percents) != self._percent:
            log.info("canary split", canary_percent=dict(sorted(percents.items())))
        self._percent = dict(percents)
        self._credit = {m: c for m, c in self._credit.items() if m in self._percent}

    def applies(self, model: str) -> bool:
        """True when the traffic file lists `model`: its canary label takes part in a split."""
        return model in self._percent

    def percent(self, model: str) -> int:
        """The share of unversioned requests that go to the canary of `model`."""
        return self._percent.get(model, 0)

    def take(self, model: str) -> bool:
        """True when this unversioned request of `model` goes to its canary."""
        percent = self._percent.get(model, 0)
        if percent <= 0:
            return False
        credit = self._credit.get(model, 0) + percent
        hit = credit >= 100
        self._credit[model] = credit - 100 if hit else credit
        return hit

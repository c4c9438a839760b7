"""Limits of the model server that need a model or a setting the shared node does not
have: decoded image size, and the cap on requests in progress (503 / UNAVAILABLE)."""

from __future__ import annotations

import base64
import io
import json
import socket

import psutil
import pytest
from PIL import Image

from agent import limits
from tests.harness.node import wait_for
from tests.harness.serving_support import Server, copy_builtin, image_model, predict_half_plus_two, write_config
from tests.security.attacks import http_raw
from tests.security.conftest import RSS_BOUND


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    models = root / "models"
    hpt = copy_builtin(models, "half_plus_two")
    image_model(models / "pixels" / "1", "NHWC", __import__("numpy").uint8)
    config = root / "models.config"
    write_config(config, [{"name": "half_plus_two", "base_path": hpt}, {"name": "pixels", "base_path": models / "pixels"}])
    s = Server(config, extra_args=("--max_concurrent_requests=1",)).start()
    s.wait_available("half_plus_two")
    s.wait_available("pixels")
    yield s
    assert s.stop() == 0


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def test_a_small_file_of_a_huge_picture_is_refused_before_decoding(server):
    png = _png(13_000, 13_000)  # 169 megapixels in ~20-170 KB
    assert len(png) < 200_000
    rss_before = psutil.Process(server.proc.pid).memory_info().rss
    status, doc = server.post("/v1/models/pixels:predict", {"instances": [{"b64": base64.b64encode(png).decode()}]})
    assert status == 400 and "exceeds the limit" in doc["error"]
    assert psutil.Process(server.proc.pid).memory_info().rss < max(RSS_BOUND, rss_before + 100 * limits.MIB)
    status, doc = server.post("/v1/models/pixels:predict", {"instances": [{"b64": base64.b64encode(_png(8, 8)).decode()}]})
    assert status == 200
    assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])


def test_requests_past_the_concurrency_cap_get_503_at_once(server):
    # A request whose body is still arriving holds the server's only slot.
    with socket.create_connection((server.ip, 8501), timeout=10) as slow:
        slow.sendall(b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n"
                     b'{"instances": [1.0,')
        def fast():
            return http_raw(server.ip, 8501, b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
                            b"Content-Length: 22\r\n\r\n", [b'{"instances": [1.0]} '])

        # The slow request is admitted as soon as its headers are in.
        status, body = wait_for(lambda: (r := fast())[0] == 503 and r, 10, 0.05, "a 503 past the cap")
        assert status == 503 and "busy" in json.loads(body)["error"]
        slow.sendall(b" 2.0, 5.0]}" + b" " * 10)
        assert slow.recv(64).startswith(b"HTTP/1.1 200")  # answered: its slot is free again
    assert predict_half_plus_two(server) == (200, [2.5, 3.0, 4.5])

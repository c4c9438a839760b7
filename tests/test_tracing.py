"""Tracing, off by default: with tracing.otlp.endpoint set, one request through Envoy
yields Envoy's span and the model server's spans (request, queue, batch, run) in one
trace, joined by W3C traceparent, at an OTLP receiver (a test double: no collector
program is installed here)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import urllib.request

import yaml

from tests.harness.addresses import allocate_loopback_ip
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, http, wait_for
from tests.harness.otlp_receiver_double import OtlpReceiverDouble

DIGITS_BODY = json.dumps({"instances": [[0.0] * 64]}).encode()


def test_one_request_through_envoy_is_one_trace_with_model_server_spans(node_ip, data_dir):
    with OtlpReceiverDouble(allocate_loopback_ip()) as receiver:
        node = Node(data_dir, single_node_tree(node_ip, **{"model.name": "digits",
                                                           "tracing.otlp.endpoint": receiver.endpoint}))
        node.install_models()
        node.start()
        try:
            wait_for(lambda: node._alive() and http("POST", f"http://{node_ip}:8080/v1/models/digits:predict",
                                                    DIGITS_BODY)[0] == 200, 60, 0.2, "digits served through Envoy")
            trace_id = secrets.token_hex(16)
            parent = secrets.token_hex(8)
            req = urllib.request.Request(f"http://{node_ip}:8080/v1/models/digits:predict", data=DIGITS_BODY,
                                         headers={"traceparent": f"00-{trace_id}-{parent}-01"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200

            def one_trace():
                spans = [s for s in receiver.spans() if s.trace_id == trace_id]
                names = {(s.service, s.name) for s in spans}
                wanted = {("inference-agent-model-server", n) for n in ("Predict", "queue", "batch", "run")}
                return spans if wanted <= names and any(s.service == "envoy" for s in spans) else None

            try:
                spans = wait_for(one_trace, 30, 0.2, "Envoy's and the model server's spans in one trace")
            except AssertionError as e:
                seen = sorted({(s.service, s.name, s.trace_id == trace_id) for s in receiver.spans()})
                raise AssertionError(f"{e}; received (service, name, in the trace): {seen}") from None
        finally:
            node.stop()
    by_id = {s.span_id: s for s in spans}
    envoy = [s for s in spans if s.service == "envoy"]
    server = next(s for s in spans if s.service == "inference-agent-model-server" and s.name == "Predict")
    # Envoy continues the client's trace; the model server's request span is a child of Envoy's.
    assert any(s.parent_span_id == parent for s in envoy)
    assert by_id[server.parent_span_id].service == "envoy"
    for name in ("queue", "batch", "run"):
        child = next(s for s in spans if s.name == name)
        assert child.parent_span_id == server.span_id, name
    assert server.attributes.get("model") == "digits"


def rendered(tmp_path, **env: str) -> str:
    """Envoy's listeners and clusters and the node's process plan, as `render` writes them."""
    metadata = tmp_path / "metadata.yaml"
    metadata.write_text(yaml.safe_dump(single_node_tree("127.0.0.1", **env)))
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-m", "agent", "render", "--metadata", str(metadata), "--out", str(out)],
                   check=True, capture_output=True)
    return "\n".join(p.read_text() for p in sorted(out.rglob("*")) if p.is_file())


def test_tracing_is_off_by_default_and_on_with_the_endpoint(tmp_path):
    (tmp_path / "off").mkdir()
    (tmp_path / "on").mkdir()
    off = rendered(tmp_path / "off")
    on = rendered(tmp_path / "on", **{"tracing.otlp.endpoint": "collector.example:4317"})
    assert "opentelemetry" not in off and "otlp_collector" not in off
    assert "envoy.tracers.opentelemetry" in on and '"collector.example"' in on and "port_value: 4317" in on

"""Envoy's admin views on the console (what the seed sent users to port 8001 for):
clusters, stats and the config dump, read-only, behind the console's password, with
secrets redacted; Envoy's admin stays on loopback."""

from __future__ import annotations

import base64
import json
import ssl
import urllib.error
import urllib.request

import pytest

from agent.console.envoy_views import REDACTED, redact
from tests.harness.foundation_trees import single_node_tree
from tests.harness.node import Node, wait_for
from tests.harness.tls import self_signed

PASSWORD = "console-pass-7f3a"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from tests.harness.addresses import allocate_loopback_ip

    ip = allocate_loopback_ip()
    tmp = tmp_path_factory.mktemp("envoy-views")
    cert, key = self_signed(ip, tmp)
    (tmp / "data").mkdir()
    n = Node(tmp / "data", single_node_tree(ip, **{"tls.cert": cert, "tls.key": key, "web.password": PASSWORD}))
    n.install_models()
    n.start()
    n.cert, n.key = cert, key
    wait_for(lambda: get(n, "/envoy/clusters")[0] == 200, 60, 0.2, "console to answer")
    yield n
    n.stop()


def get(node: Node, path: str, password: str | None = PASSWORD) -> tuple[int, str, str]:
    """(status, body, content type) of a console GET over HTTPS."""
    context = ssl.create_default_context(cadata=node.cert)
    headers = {}
    if password is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()
    req = urllib.request.Request(f"https://{node.ip}:8090{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, context=context, timeout=20) as resp:
            return resp.status, resp.read().decode(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), e.headers.get("Content-Type", "")
    except OSError:
        return 0, "", ""


def test_clusters_and_stats_show_every_serving_upstream(node):
    status, body, kind = get(node, "/envoy/clusters")
    assert status == 200 and kind.startswith("text/plain")
    assert f"serving_rest::{node.ip}:8501::health_flags::" in body
    status, body, _ = get(node, "/envoy/clusters?format=json")
    assert status == 200 and "serving_grpc" in {c["name"] for c in json.loads(body)["cluster_statuses"]}
    status, body, _ = get(node, "/envoy/stats?filter=^cluster%5C.serving_rest%5C.upstream_rq_total$")
    assert status == 200 and body.startswith("cluster.serving_rest.upstream_rq_total: ")
    assert "listener" not in body


def test_the_config_dump_carries_no_secret(node):
    status, body, kind = get(node, "/envoy/config_dump")
    assert status == 200 and kind.startswith("application/json"), body[:300]
    doc = json.loads(body)
    assert any("ListenersConfigDump" in c.get("@type", "") for c in doc["configs"])
    key_body = "".join(node.key.strip().splitlines()[1:-1])[:64]
    assert "PRIVATE KEY" not in body and key_body not in body.replace("\\n", "")
    assert PASSWORD not in body
    assert REDACTED in body  # the listener's private key, where it was
    assert node.cert.splitlines()[1] in body.replace("\\n", "\n")  # the certificate is no secret


def test_views_are_behind_the_password_and_read_only(node):
    for path in ("/envoy/clusters", "/envoy/config_dump", "/envoy/stats"):
        assert get(node, path, password=None)[0] == 401
    # Only the three views, and only their known parameters: nothing that changes Envoy.
    for path in ("/envoy/healthcheck/fail", "/envoy/quitquitquit", "/envoy/logging", "/envoy/runtime_modify"):
        assert get(node, path)[0] == 404
    assert get(node, "/envoy/stats?filter=" + "a" * 500)[0] == 400
    assert get(node, "/envoy/clusters?format=html")[0] == 400
    assert get(node, "/envoy/config_dump?mask=x")[0] == 400
    context = ssl.create_default_context(cadata=node.cert)
    req = urllib.request.Request(f"https://{node.ip}:8090/envoy/clusters", method="POST", data=b"",
                                 headers={"Authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, context=context, timeout=20)
    assert refused.value.code == 405
    # Last: a wrong password slows this client down from here on.
    assert get(node, "/envoy/config_dump", password="wrong")[0] == 401


def test_redaction_covers_keys_passwords_and_credential_headers():
    doc = {"a": [{"tls_certificates": [{"certificate_chain": {"inline_string": "CERT"},
                                        "private_key": {"inline_string": "k3y"}}]},
                 {"request_headers_to_add": [{"header": {"key": "Authorization", "value": "Basic abc"}},
                                             {"header": {"key": "x-node", "value": "n1"}}]},
                 {"generic_secret": {"secret": {"inline_bytes": "c2VjcmV0"}}},
                 {"note": "-----BEGIN RSA PRIVATE KEY-----\nMII..."}]}
    out = json.dumps(redact(doc))
    assert "k3y" not in out and "Basic abc" not in out and "c2VjcmV0" not in out and "MII" not in out
    assert "CERT" in out and '"n1"' in out

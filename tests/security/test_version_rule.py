"""One version rule (TF Serving's int64) for the model store's sync and the model
server: what one installs, the other serves; anything else is ignored by both."""

from __future__ import annotations

from agent.modelstore.listing import VERSION_RE
from agent.serving.versions import MAX_VERSION, QUIET_SECONDS, discover, parse_version
from tests.harness.node import wait_for


def test_the_rule():
    assert parse_version("0") == 0 and parse_version("17") == 17
    assert parse_version(str(MAX_VERSION)) == MAX_VERSION
    for bad in (str(MAX_VERSION + 1), "9999999999999999999", "1\n", "-1", "+1", "１", "٣", "1.0", "", " 1"):
        assert parse_version(bad) is None, bad
        assert not VERSION_RE.match(bad), bad


def test_server_ignores_versions_outside_the_rule(tmp_path):
    for name in ("1", "9999999999999999999", "007", "٣", "0007"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"x")
    # A version directory is taken once complete (see versions.complete): at the latest
    # when it has been quiet for QUIET_SECONDS. The others are never taken.
    wait_for(lambda: set(discover(tmp_path)) == {1, 7}, timeout=10 * QUIET_SECONDS, what="versions 1 and 7 to be taken")
    # TF Serving's demo models are `00000123`: leading zeros are allowed; of two names
    # for one version the shorter one is taken.
    assert discover(tmp_path)[7].path.name == "007"

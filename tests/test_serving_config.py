"""models.config parsing and version policies, the backend choice and its command
line, and the built-in models' installation."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.serving.backend import resolve_backend, server_argv
from agent.serving.builtin_models import BUILTIN_MODELS, install_builtin
from agent.serving.config import ConfigError, VersionPolicy, parse_models_config

FULL = """
model_config_list {
  config {
    name: "half_plus_two"
    base_path: "/abs/data/models/half_plus_two"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "all" base_path: "/m/all" model_version_policy { all {} } }
  config { name: "two" base_path: "/m/two" model_version_policy { latest { num_versions: 2 } } }
  config { name: "plain" base_path: "/m/plain" }
}
"""


def test_full_tf_serving_syntax_is_parsed():
    hpt, every, two, plain = parse_models_config(FULL)
    assert (hpt.name, hpt.base_path, hpt.platform) == ("half_plus_two", Path("/abs/data/models/half_plus_two"), "tensorflow")
    assert hpt.policy == VersionPolicy("specific", versions=(1, 2))
    assert (hpt.label_version("stable"), hpt.label_version("canary"), hpt.label_version("x")) == (1, 2, None)
    assert every.policy.kind == "all"
    assert two.policy == VersionPolicy("latest", num_versions=2)
    assert plain.policy == VersionPolicy("latest", num_versions=1)


def test_version_policies_select_versions():
    available = {1, 2, 5, 10}
    assert VersionPolicy().select(available) == {10}
    assert VersionPolicy("latest", num_versions=2).select(available) == {5, 10}
    assert VersionPolicy("all").select(available) == available
    assert VersionPolicy("specific", versions=(2, 3)).select(available) == {2}
    assert VersionPolicy().select(set()) == set()


@pytest.mark.parametrize("text, message", [
    ("model_config_list { config { nme: 'x' } }", "no field named"),
    ("model_config_list { config { base_path: '/x' } }", "has no name"),
    ("model_config_list { config { name: 'a' } }", "has no base_path"),
    ("model_config_list { config { name: 'a' base_path: '/x' } config { name: 'a' base_path: '/y' } }", "twice"),
])
def test_bad_configs_are_rejected_with_the_reason(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_models_config(text)


def test_backend_auto_follows_the_tf_serving_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert resolve_backend("auto") == "builtin"
    binary = tmp_path / "tensorflow_model_server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert resolve_backend("auto") == "tfserving"
    assert resolve_backend("builtin") == "builtin"
    with pytest.raises(ValueError):
        resolve_backend("torchserve")


def test_server_command_lines(tmp_path):
    config = tmp_path / "models.config"
    argv = server_argv("builtin", config, "127.0.0.9", 8500, 8501, 4, poll_seconds=2)
    assert argv[:4] == [sys.executable, "-m", "agent", "serve"]
    assert {"--host=127.0.0.9", "--port=8500", "--rest_api_port=8501", f"--model_config_file={config}",
            "--model_config_file_poll_wait_seconds=2", "--intra_op_threads=4"} <= set(argv)
    tf = server_argv("tfserving", config, "127.0.0.9", 8500, 8501, None)
    assert tf[0].endswith("tensorflow_model_server")
    assert {"--port=8500", "--rest_api_port=8501", "--model_config_file_poll_wait_seconds=1"} <= set(tf)
    assert not any(a.startswith("--host") for a in tf)


def test_builtin_models_install_in_tf_serving_layout_idempotently(tmp_path):
    paths = install_builtin(tmp_path)
    assert paths == [tmp_path / name / "1" for name in BUILTIN_MODELS]
    assert sorted(os.listdir(tmp_path / "resnet")) == ["1"]  # no staging left behind
    session = ort.InferenceSession(str(tmp_path / "half_plus_two" / "1" / "model.onnx"))
    assert session.run(None, {"x": np.array([1.0, 2.0, 5.0], np.float32)})[0].tolist() == [2.5, 3.0, 4.5]
    resnet = ort.InferenceSession(str(tmp_path / "resnet" / "1" / "model.onnx"))
    probabilities, classes = resnet.run(None, {"image_bytes": np.zeros((3, 224, 224, 3), np.uint8)})
    assert probabilities.shape == (3, 1000) and classes.shape == (3,)
    # A second install leaves what is there alone (a replaced model stays replaced).
    marker = tmp_path / "half_plus_two" / "1" / "model.onnx"
    marker.write_bytes(b"mine")
    assert install_builtin(tmp_path, ["half_plus_two"]) == [tmp_path / "half_plus_two" / "1"]
    assert marker.read_bytes() == b"mine"
    with pytest.raises(ValueError, match="unknown built-in"):
        install_builtin(tmp_path, ["mnist"])


def test_models_install_builtin_command(tmp_path):
    from agent.cli import main

    assert main(["models", "install-builtin", str(tmp_path), "--name", "half_plus_two"]) == 0
    assert (tmp_path / "half_plus_two" / "1" / "model.onnx").is_file()
    assert not (tmp_path / "resnet").exists()

"""serving.runtime, serving.precision and the batching parameters: validated by name, and
carried by the plan to the model server's command line; the model server's threads
follow the node's CPUs (a vertical scale changes the command line, so it restarts)."""

from __future__ import annotations

import pytest

from agent.paths import Paths
from agent.pipeline.plan import make_plan
from agent.processes.names import MODEL_SERVER
from agent.state import parse_cluster_state
from tests.harness.foundation_trees import single_node_tree
from tests.test_state import problems


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"serving.runtime": "tensorrt"}, "env/serving.runtime: must be one of auto, openvino, onnxruntime, got 'tensorrt'"),
        ({"serving.precision": "int4"}, "env/serving.precision: must be one of auto, fp32, bf16, fp16, got 'int4'"),
        ({"serving.batching.max_batch_size": "0"}, "env/serving.batching.max_batch_size: must be at least 1, got 0"),
        ({"serving.batching.enable": "perhaps"}, "env/serving.batching.enable: must be true or false, got 'perhaps'"),
        ({"serving.batching.allowed_batch_sizes": "8,x"}, "env/serving.batching.allowed_batch_sizes: must match"),
        ({"serving.batching.allowed_batch_sizes": "8,4,32"},
         "env/serving.batching.allowed_batch_sizes: must be increasing sizes ending with serving.batching.max_batch_size (32)"),
        ({"serving.batching.allowed_batch_sizes": "4,16"},
         "env/serving.batching.allowed_batch_sizes: must be increasing sizes ending with serving.batching.max_batch_size (32)"),
    ],
)
def test_each_serving_parameter_rule_is_reported_by_name(env, expected):
    found = problems(single_node_tree(**env))
    assert any(p.startswith(expected) for p in found), found


def _server_argv(tree: dict, tmp_path) -> list[str]:
    plan = make_plan(parse_cluster_state(tree), Paths(tmp_path), ("half_plus_two",))
    (spec,) = [p for p in plan.processes if p.name == MODEL_SERVER]
    return list(spec.argv)


def test_the_parameters_reach_the_model_server_command_line(tmp_path):
    tree = single_node_tree(**{
        "serving.backend": "builtin", "serving.runtime": "openvino", "serving.precision": "fp32",
        "serving.batching.max_batch_size": "16", "serving.batching.allowed_batch_sizes": "4,16",
        "serving.batching.batch_timeout_micros": "500", "serving.batching.enable": "false",
    })
    argv = _server_argv(tree, tmp_path)
    assert {"--runtime=openvino", "--precision=fp32", "--max_batch_size=16", "--allowed_batch_sizes=4,16",
            "--batch_timeout_micros=500", "--enable_batching=false",
            f"--compile_cache_dir={tmp_path / 'compile_cache'}"} <= set(argv)
    defaults = _server_argv(single_node_tree(**{"serving.backend": "builtin"}), tmp_path)
    assert {"--runtime=auto", "--precision=auto", "--enable_batching=true", "--max_batch_size=32"} <= set(defaults)


def test_threads_follow_the_nodes_cpus(tmp_path):
    tree = single_node_tree(**{"serving.backend": "builtin"})
    assert "--intra_op_threads=2" in _server_argv(tree, tmp_path)
    for host in [tree["host"], *tree["hosts"]["model_serving"].values()]:
        host["cpu"] = "8"  # a vertical scale
    assert "--intra_op_threads=8" in _server_argv(tree, tmp_path)

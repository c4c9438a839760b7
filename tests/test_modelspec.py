"""model.name as a list, model.version.policy, model.version.labels and
model.canary.percent: parsed in one place, refused with the parameter and the entry named,
and rendered into a models.config that the built-in server's own parser reads back."""

from __future__ import annotations

import json

import pytest

from agent.errors import InvalidMetadata
from agent.paths import Paths
from agent.pipeline.plan import make_plan
from agent.serving.config import parse_models_config
from agent.state import parse_cluster_state
from tests.harness.foundation_trees import single_node_tree


def state_of(**env):
    tree = single_node_tree("127.0.0.1", **env)
    return parse_cluster_state(tree), tree


def problems_of(**env) -> str:
    with pytest.raises(InvalidMetadata) as e:
        state_of(**env)
    return str(e.value)


def test_one_name_keeps_working_and_the_default_is_half_plus_two():
    state, _ = state_of()
    assert state.params.model_names == ("half_plus_two",)
    assert [m.to_dict() for m in state.params.models] == [{"name": "half_plus_two", "policy": "latest 1", "labels": {}}]


def test_a_list_with_a_cluster_policy_per_model_policies_and_labels():
    state, _ = state_of(**{
        "model.name": " half_plus_two ,digits, resnet ",
        "model.version.policy": "latest 2; resnet: specific 3,4; digits: all",
        "model.version.labels": "stable=3,canary=4; digits: stable=1",
    })
    models = {m.name: m.to_dict() for m in state.params.models}
    assert list(models) == ["half_plus_two", "digits", "resnet"]
    assert models["half_plus_two"] == {"name": "half_plus_two", "policy": "latest 2", "labels": {"canary": 4, "stable": 3}}
    # A model's own labels add to (and override) the labels for every model.
    assert models["digits"] == {"name": "digits", "policy": "all", "labels": {"canary": 4, "stable": 1}}
    assert models["resnet"] == {"name": "resnet", "policy": "specific 3,4", "labels": {"canary": 4, "stable": 3}}


@pytest.mark.parametrize("env, where, says", [
    ({"model.name": "a,a"}, "env/model.name", "lists a more than once"),
    ({"model.name": "a,,b"}, "env/model.name", "must match"),
    ({"model.name": "a,../etc"}, "env/model.name", "must match"),
    ({"model.name": ",".join(f"m{i}" for i in range(17))}, "env/model.name", "must match"),
    ({"model.version.policy": "newest"}, "env/model.version.policy", "must be 'latest [N]', 'all' or 'specific V[,V...]'"),
    ({"model.version.policy": "latest 0"}, "env/model.version.policy", "latest takes a count from 1 to 1000"),
    ({"model.version.policy": "specific 3,x"}, "env/model.version.policy", "version must be a number"),
    ({"model.version.policy": "specific 99999999999999999999"}, "env/model.version.policy", "version must be a number"),
    ({"model.version.policy": "other: all"}, "env/model.version.policy", "names 'other', which model.name does not list"),
    ({"model.version.policy": "all; latest"}, "env/model.version.policy", "every model (an entry without a model name) is given twice"),
    ({"model.version.labels": "stable"}, "env/model.version.labels", "labels are written label=version"),
    ({"model.version.labels": "3=4"}, "env/model.version.labels", "labels are written label=version"),
    ({"model.version.labels": "stable=1,stable=2"}, "env/model.version.labels", "label 'stable' is given twice"),
    ({"model.version.policy": "specific 1,2", "model.version.labels": "canary=3"}, "env/model.version.labels",
     "half_plus_two: label canary=3 names a version that its policy (specific 1,2) does not serve"),
    ({"model.canary.percent": "101"}, "env/model.canary.percent", "must be at most 100"),
    ({"model.canary.percent": "-1"}, "env/model.canary.percent", "must be at least 0"),
    ({"model.version.labels": "stable=1\n"}, "env/model.version.labels", "must match"),
])
def test_bad_values_are_refused_naming_the_parameter_and_the_entry(env, where, says):
    message = problems_of(**env)
    assert where in message and says in message, message


def test_models_config_carries_policies_and_labels_as_the_server_reads_them(tmp_path):
    state, tree = state_of(**{
        "model.name": "half_plus_two, digits, resnet",
        "model.version.policy": "latest; digits: latest 3; resnet: specific 3,4",
        "model.version.labels": "resnet: stable=3,canary=4",
        "model.canary.percent": "20",
    })
    plan = make_plan(state, Paths(tmp_path))
    files = {f.path.name: f.content.decode() for f in plan.files}
    configs = {c.name: c for c in parse_models_config(files["models.config"])}
    assert list(configs) == ["half_plus_two", "digits", "resnet"]
    assert (configs["half_plus_two"].policy.kind, configs["half_plus_two"].policy.num_versions) == ("latest", 1)
    assert (configs["digits"].policy.kind, configs["digits"].policy.num_versions) == ("latest", 3)
    assert (configs["resnet"].policy.kind, configs["resnet"].policy.versions) == ("specific", (3, 4))
    assert dict(configs["resnet"].labels) == {"stable": 3, "canary": 4}
    assert all(c.base_path == tmp_path / "models" / n for n, c in configs.items())
    # The canary split only for the model that has a canary label.
    assert json.loads(files["traffic.json"]) == {"canary_percent": {"resnet": 20}}
    server = next(p for p in plan.processes if p.name == "model_server")
    assert f"--traffic_file={tmp_path / 'conf' / 'serving' / 'traffic.json'}" in server.argv


def test_envoy_health_checks_the_model_kept_while_models_come_and_go(tmp_path):
    state, tree = state_of(**{"model.name": "a, b, c"})
    cds = next(f for f in make_plan(state, Paths(tmp_path)).files if f.path.name == "cds.yaml").content.decode()
    assert '"/v1/models/a"' in cds
    cds = next(f for f in make_plan(state, Paths(tmp_path), health_model="b").files
               if f.path.name == "cds.yaml").content.decode()
    assert '"/v1/models/b"' in cds and '"/v1/models/a"' not in cds

"""The platform's app files agree with the code: every service runs an executable hook
within the platform's limits, config.json carries every parameter, and every exit code
and monitor item is documented and translated."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from agent import PROJECT_ROOT
from agent.commands.hook import HOOKS, exit_codes
from agent.nodeops.monitor import GROUPS, ITEMS
from agent.params import parameter_specs
from tests.harness.platform_hooks import cluster_json

PLATFORM = PROJECT_ROOT / "platform"


def test_generated_files_are_up_to_date():
    out = subprocess.run([sys.executable, str(PLATFORM / "generate.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_every_service_runs_an_executable_hook_within_the_platforms_limits():
    hook_files = {p.name for p in (PROJECT_ROOT / "hooks").iterdir() if p.name != "run-hook"}
    assert hook_files == set(HOOKS)
    for p in (PROJECT_ROOT / "hooks").iterdir():
        assert os.access(p, os.X_OK), p
    doc = cluster_json()
    assert {n["role"] for n in doc["nodes"]} == {"model_serving", "model_repo"}
    for node in doc["nodes"]:
        commands = [s["cmd"] for s in node["services"].values()] + [node["services"]["scale_in"]["pre_check"]]
        commands += [node["health_check"]["check_cmd"], node["health_check"]["action_cmd"], node["monitor"]["cmd"]]
        for cmd in commands:
            name = cmd.removeprefix("/opt/inference-agent/hooks/")
            assert name in HOOKS, cmd
        for service in node["services"].values():
            name = service["cmd"].rsplit("/", 1)[1]
            assert service["timeout"] > HOOKS[name][1], service  # the hook gives up first
        hc = node["health_check"]
        assert hc["interval_sec"] >= 60 and hc["timeout_sec"] >= 3
        assert min(hc["healthy_threshold"], hc["unhealthy_threshold"]) >= 2
        assert hc["timeout_sec"] > HOOKS["health-check"][1] and hc["action_timeout_sec"] > HOOKS["health-action"][1]
        assert HOOKS["monitor"][1] < 5
        monitor = node["monitor"]
        assert monitor["items"] == {item.name: item.definition() for item in ITEMS}
        assert len(monitor["items"]) <= 50
        for group, members in monitor["groups"].items():
            assert 1 <= len(members) <= 5 and set(members) <= set(monitor["items"]), group
        assert set(monitor["alarm"]) <= set(monitor["items"])
    assert set(doc["env"]) == {p["key"] for p in parameter_specs()}


def test_config_json_offers_every_parameter_with_its_rules():
    config = json.loads((PLATFORM / "config.json").read_text())
    env = next(p for p in config["properties"] if p["key"] == "env")["properties"]
    for spec, item in zip(parameter_specs(), env, strict=True):
        assert item["key"] == spec["key"] and item["type"] == spec["type"]
        assert item["default"] == spec.get("default", "")
        for rule in ("range", "min", "max", "pattern"):
            assert item.get(rule) == spec.get(rule), (spec["key"], rule)
    # No default credentials anywhere.
    secrets = [i for i in env if i["type"] == "password" or i["key"].endswith("access.key")]
    assert secrets and all(i["default"] == "" for i in secrets)


def test_every_exit_code_is_documented_and_translated():
    doc = (PROJECT_ROOT / "docs" / "hooks.md").read_text()
    documented = {int(code): name for code, name in re.findall(r"^\| (\d+) \| (\w+) \|", doc, re.M)}
    assert documented == exit_codes()
    for lang in ("en", "zh-cn"):
        locale = json.loads((PLATFORM / "locale" / f"{lang}.json").read_text())
        for code in exit_codes():
            if code:
                assert locale.get(f"err_code{code}"), (lang, code)
        for name in [item.name for item in ITEMS] + list(GROUPS):
            assert locale.get(name), (lang, name)

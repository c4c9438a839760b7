"""The models a cluster serves, from the parameters `model.name` (a comma-separated
list), `model.version.policy` and `model.version.labels`, as typed `ModelSpec`s.

Written forms (the README and config_schema.json say the same):
- model.name: `half_plus_two` or `half_plus_two, digits, resnet` (at most MAX_MODELS);
- model.version.policy: `latest`, `latest 2`, `all` or `specific 3,4` for every model,
  and `name: policy` entries, separated by `;`, for single models:
  `latest; resnet: specific 3,4`;
- model.version.labels: `stable=3,canary=4` for every model, `name: stable=3,canary=4`
  for one, groups separated by `;`.
Every rule is checked here once; a problem names the parameter and the entry."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.errors import Problem

MAX_MODELS = 16
MAX_LABELS = 16
# A model name becomes a directory name and an API path segment: config_schema.json's rule.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def valid_model_name(name: str) -> bool:
    """True when `name` is one model name by model.name's rule (it becomes a directory
    name: no '..', no '/'); the one home of that rule."""
    return MODEL_NAME.fullmatch(name) is not None


LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
# TF Serving's versions are int64.
MAX_VERSION = 2**63 - 1
CANARY = "canary"
STABLE = "stable"

POLICY_KEY = "model.version.policy"
LABELS_KEY = "model.version.labels"
NAME_KEY = "model.name"


@dataclass(frozen=True)
class Policy:
    """TF Serving's model_version_policy: the latest N versions, all, or specific ones."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind == "specific":
            return "specific " + ",".join(map(str, self.versions))
        return f"latest {self.num_versions}"


@dataclass(frozen=True)
class ModelSpec:
    """One model the cluster serves: its name, version policy and labels."""

    name: str
    policy: Policy = Policy()
    labels: tuple[tuple[str, int], ...] = ()

    def label(self, name: str) -> int | None:
        """The version a label points at, or None."""
        return dict(self.labels).get(name)

    def to_dict(self) -> dict:
        """JSON-ready, for status and the console."""
        return {"name": self.name, "policy": str(self.policy), "labels": dict(self.labels)}


def model_names(text: str) -> tuple[str, ...]:
    """The names of a model.name value, in order (blank entries dropped)."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _version(text: str, where: str, problems: list[Problem]) -> int | None:
    if not re.fullmatch(r"\d{1,19}", text) or int(text) > MAX_VERSION:
        problems.append(Problem(where, f"version must be a number up to {MAX_VERSION}, got {text[:40]!r}"))
        return None
    return int(text)


def _entries(text: str, key: str, names: tuple[str, ...], problems: list[Problem]) -> list[tuple[str | None, str]]:
    """The `;`-separated entries of `text` as (model or None for every model, body)."""
    out: list[tuple[str | None, str]] = []
    seen: set[str | None] = set()
    for raw in text.split(";"):
        entry = raw.strip()
        if not entry:
            continue
        model: str | None = None
        head, colon, body = entry.partition(":")
        # `name: ...` prefixes a model; a policy's own words never contain a colon.
        if colon:
            model, entry = head.strip(), body.strip()
            if model not in names:
                problems.append(Problem(f"env/{key}", f"entry {raw.strip()[:60]!r} names {model[:40]!r}, which model.name does not list"))
                continue
        if model in seen:
            what = f"model {model!r}" if model else "every model (an entry without a model name)"
            problems.append(Problem(f"env/{key}", f"{what} is given twice"))
            continue
        seen.add(model)
        out.append((model, entry))
    return out


def parse_policy(text: str, where: str, problems: list[Problem]) -> Policy | None:
    """One policy: `latest`, `latest N`, `all` or `specific V,V,...`."""
    words = text.split(None, 1)
    kind = words[0].lower() if words else ""
    rest = words[1].strip() if len(words) > 1 else ""
    if kind == "all" and not rest:
        return Policy("all")
    if kind == "latest":
        if not rest:
            return Policy("latest", 1)
        if re.fullmatch(r"\d{1,4}", rest) and 1 <= int(rest) <= 1000:
            return Policy("latest", int(rest))
        problems.append(Problem(where, f"latest takes a count from 1 to 1000, got {rest[:40]!r}"))
        return None
    if kind == "specific" and rest:
        versions = [_version(v.strip(), where, problems) for v in rest.split(",")]
        if any(v is None for v in versions):
            return None
        if len(versions) > MAX_LABELS * 4:
            problems.append(Problem(where, f"at most {MAX_LABELS * 4} specific versions"))
            return None
        return Policy("specific", versions=tuple(sorted(set(v for v in versions if v is not None))))
    problems.append(Problem(where, f"must be 'latest [N]', 'all' or 'specific V[,V...]', got {text[:60]!r}"))
    return None


def parse_labels(text: str, where: str, problems: list[Problem]) -> dict[str, int]:
    """One group of labels: `stable=3,canary=4`."""
    labels: dict[str, int] = {}
    for item in text.split(","):
        label, eq, number = (p.strip() for p in item.partition("="))
        if not eq or not LABEL.fullmatch(label):
            problems.append(Problem(where, f"labels are written label=version, a label being letters, digits, '_' or '-' "
                                           f"and not starting with a digit; got {item.strip()[:60]!r}"))
            continue
        if label in labels:
            problems.append(Problem(where, f"label {label!r} is given twice"))
            continue
        version = _version(number, where, problems)
        if version is not None:
            labels[label] = version
    if len(labels) > MAX_LABELS:
        problems.append(Problem(where, f"at most {MAX_LABELS} labels per model"))
    return labels


def parse_models(name_text: str, policy_text: str, labels_text: str) -> tuple[tuple[ModelSpec, ...], list[Problem]]:
    """The ModelSpecs of the three parameters, or every problem found."""
    problems: list[Problem] = []
    names = model_names(name_text)
    if not names:
        problems.append(Problem(f"env/{NAME_KEY}", "names no model"))
    if len(names) > MAX_MODELS:
        problems.append(Problem(f"env/{NAME_KEY}", f"lists {len(names)} models; at most {MAX_MODELS}"))
    for name in names:
        if not MODEL_NAME.fullmatch(name):
            problems.append(Problem(f"env/{NAME_KEY}", f"{name[:60]!r} is not a model name (letters, digits, '.', '_', '-'; "
                                                       f"starting with a letter or digit; at most 128)"))
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(Problem(f"env/{NAME_KEY}", f"lists {', '.join(duplicates)} more than once"))
    policies: dict[str | None, Policy] = {}
    for model, body in _entries(policy_text, POLICY_KEY, names, problems):
        policy = parse_policy(body, f"env/{POLICY_KEY}" + (f" ({model})" if model else ""), problems)
        if policy is not None:
            policies[model] = policy
    labels: dict[str | None, dict[str, int]] = {}
    for model, body in _entries(labels_text, LABELS_KEY, names, problems):
        labels[model] = parse_labels(body, f"env/{LABELS_KEY}" + (f" ({model})" if model else ""), problems)
    specs = []
    for name in names:
        policy = policies.get(name) or policies.get(None) or Policy()
        mine = {**labels.get(None, {}), **labels.get(name, {})}
        if policy.kind == "specific":
            # TF Serving refuses a label on a version its policy does not serve.
            for label, version in sorted(mine.items()):
                if version not in policy.versions:
                    problems.append(Problem(f"env/{LABELS_KEY}", f"{name}: label {label}={version} names a version that "
                                                                 f"its policy ({policy}) does not serve"))
        specs.append(ModelSpec(name, policy, tuple(sorted(mine.items()))))
    return (tuple(specs), problems) if not problems else ((), problems)

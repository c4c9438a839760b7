"""The product's parameters: string values from /self/env converted and validated against
config_schema.json, in one place, into a typed `Params`."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Mapping

import jsonschema

from agent import PROJECT_ROOT
from agent.errors import Problem
from agent.ports import FIXED_PORTS
from agent.modelspec import ModelSpec, model_names, parse_models

SCHEMA_FILE = PROJECT_ROOT / "config_schema.json"

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


@dataclass(frozen=True)
class Params:
    """Every parameter in force, typed. Secrets are kept out of repr."""

    model_name: str  # the model.name text: one name or a comma-separated list (see `models`)
    model_base_path: str
    http_port: int
    grpc_port: int
    enable_access_log: bool
    s3_type: str
    s3_endpoint: str
    s3_region: str
    s3_access_key: str
    s3_secret_key: str = field(repr=False)
    model_sync_interval: int
    serving_backend: str
    web_password: str = field(repr=False)
    tls_cert: str
    tls_key: str = field(repr=False)
    serving_runtime: str = "auto"
    serving_precision: str = "auto"
    serving_batching_enable: bool = True
    serving_batching_max_batch_size: int = 32
    serving_batching_batch_timeout_micros: int = 1000
    serving_batching_max_enqueued_batches: int = 64
    serving_batching_num_batch_threads: int = 1
    serving_batching_allowed_batch_sizes: str = ""
    serving_batching_pad_variable_length_inputs: bool = False
    web_charts_interval: int = 5
    tracing_otlp_endpoint: str = ""
    request_log_sample_rate: float = 0.0
    request_log_max_bytes: int = 4096
    model_version_policy: str = "latest"
    model_version_labels: str = ""
    model_canary_percent: int = 0

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """Every model the cluster serves, in model.name's order, with its policy and labels."""
        return parse_models(self.model_name, self.model_version_policy, self.model_version_labels)[0]

    @property
    def model_names(self) -> tuple[str, ...]:
        """The names model.name lists, in order."""
        return model_names(self.model_name)

    @property
    def tls(self) -> bool:
        """True when the public listeners and the console serve TLS."""
        return bool(self.tls_cert and self.tls_key)

    @property
    def bucket(self) -> str:
        """Bucket of `model.base.path` (s3://bucket/prefix)."""
        return self.model_base_path[len("s3://"):].split("/", 1)[0]

    @property
    def prefix(self) -> str:
        """Key prefix of `model.base.path`, without slashes at either end."""
        rest = self.model_base_path[len("s3://"):].split("/", 1)
        return rest[1].strip("/") if len(rest) > 1 else ""

    def public(self) -> dict[str, Any]:
        """The parameters by their metadata keys, secrets masked: what status and the console show."""
        out = {}
        for spec in parameter_specs():
            value = getattr(self, _attr(spec["key"]))
            if spec["type"] == "password" or spec["key"].endswith("access.key"):
                value = "***" if value else ""
            out[spec["key"]] = value
        return out


def _attr(key: str) -> str:
    return key.replace(".", "_")


@cache
def _schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text())


def parameter_specs() -> list[dict]:
    """The parameter definitions of config_schema.json, in order."""
    return _schema()["parameters"]


def reserved_ports() -> dict[int, str]:
    """Ports the API ports may not take, with what holds them."""
    return dict(FIXED_PORTS)


def _json_schema(spec: dict) -> dict:
    """The jsonschema rules of one parameter spec (after its string has been converted)."""
    kind = {"integer": "integer", "number": "number", "boolean": "boolean"}.get(spec["type"], "string")
    rules: dict[str, Any] = {"type": kind}
    if "range" in spec:
        rules["enum"] = spec["range"]
    if "min" in spec:
        rules["minimum"] = spec["min"]
    if "max" in spec:
        rules["maximum"] = spec["max"]
    if "pattern" in spec:
        rules["pattern"] = strict_pattern(spec["pattern"])
    return rules


def strict_pattern(pattern: str) -> str:
    """The pattern with a final `$` that matches only at the very end: Python's `$` also
    matches before a trailing newline, so "X\n" passed `^.{0,128}$`."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + r"\Z"
    return pattern


def _convert(spec: dict, raw: str) -> Any:
    """Convert a metadata string to the spec's type; ValueError says why it cannot be."""
    kind = spec["type"]
    text = raw.strip()
    if kind == "integer":
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError(f"must be an integer, got {raw!r}")
        return int(text)
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"must be a number, got {raw!r}") from None
    if kind == "boolean":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"must be true or false, got {raw!r}")
    return raw


def is_secret(spec: dict) -> bool:
    """True for a parameter whose value must never appear in a message."""
    return spec["type"] == "password"


def _describe(error: jsonschema.ValidationError, spec: dict) -> str:
    validator = error.validator
    if is_secret(spec):
        # The rule only: a rejected secret is often the real one with a typo.
        rule = {"pattern": f"must match {spec.get('pattern')}", "enum": "must be one of the allowed values"}
        return rule.get(validator, f"fails the {validator} rule") + " (value not shown)"
    if validator == "enum":
        return f"must be one of {', '.join(map(str, spec['range']))}, got {error.instance!r}"
    if validator == "minimum":
        return f"must be at least {spec['min']}, got {error.instance}"
    if validator == "maximum":
        return f"must be at most {spec['max']}, got {error.instance}"
    if validator == "pattern":
        return f"must match {spec['pattern']}, got {error.instance!r}"
    return error.message


def parse_params(env: Mapping[str, Any]) -> tuple[Params | None, list[Problem]]:
    """Convert and validate `/self/env`; returns Params, or None with every problem found."""
    problems: list[Problem] = []
    values: dict[str, Any] = {}
    env = _with_accesskey_dirs(env)
    for spec in parameter_specs():
        key = spec["key"]
        raw = env.get(key)
        if isinstance(raw, Mapping):
            problems.append(Problem(f"env/{key}", "must be a value, not a directory"))
            continue
        if raw is None or (raw == "" and spec["type"] not in ("string", "password")):
            if spec.get("required") and "default" not in spec:
                problems.append(Problem(f"env/{key}", "is required"))
                continue
            values[key] = spec.get("default")
            continue
        try:
            value = _convert(spec, raw)
        except ValueError as e:
            problems.append(Problem(f"env/{key}", str(e)))
            continue
        for error in jsonschema.Draft202012Validator(_json_schema(spec)).iter_errors(value):
            problems.append(Problem(f"env/{key}", _describe(error, spec)))
        values[key] = value
    if problems:
        return None, problems
    params = Params(**{_attr(k): v for k, v in values.items()})
    problems = _cross_field_problems(params)
    return (None, problems) if problems else (params, [])


def _with_accesskey_dirs(env: Mapping[str, Any]) -> Mapping[str, Any]:
    """Map a platform `accesskey` parameter (a directory of access_key_id and
    secret_access_key) onto s3.access.key/s3.secret.key when those are unset."""
    for value in env.values():
        if isinstance(value, Mapping) and "access_key_id" in value and "secret_access_key" in value:
            merged = dict(env)
            if not merged.get("s3.access.key"):
                merged["s3.access.key"] = value["access_key_id"]
                merged["s3.secret.key"] = value["secret_access_key"]
            return merged
    return env


def _cross_field_problems(p: Params) -> list[Problem]:
    problems = list(parse_models(p.model_name, p.model_version_policy, p.model_version_labels)[1])
    reserved = reserved_ports()
    for key, port in (("http.port", p.http_port), ("grpc.port", p.grpc_port)):
        if port in reserved:
            problems.append(Problem(f"env/{key}", f"port {port} is reserved for {reserved[port]}"))
    if p.http_port == p.grpc_port:
        problems.append(Problem("env/grpc.port", f"must differ from http.port (both are {p.http_port})"))
    if p.s3_type == "ois" and not p.s3_endpoint:
        problems.append(Problem("env/s3.endpoint", "is required when s3.type is ois"))
    if p.s3_type in ("minio", "ois"):
        for key, value in (("s3.access.key", p.s3_access_key), ("s3.secret.key", p.s3_secret_key)):
            if not value:
                problems.append(Problem(f"env/{key}", f"is required when s3.type is {p.s3_type} (no default key is shipped)"))
    sizes = [int(x) for x in p.serving_batching_allowed_batch_sizes.split(",") if x]
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != p.serving_batching_max_batch_size or sizes[0] < 1):
        problems.append(Problem(
            "env/serving.batching.allowed_batch_sizes",
            f"must be increasing sizes ending with serving.batching.max_batch_size ({p.serving_batching_max_batch_size}), "
            f"got {p.serving_batching_allowed_batch_sizes!r}",
        ))
    if bool(p.tls_cert) != bool(p.tls_key):
        problems.append(Problem("env/tls.key", "tls.cert and tls.key go together: set both or neither"))
    elif p.tls and (why := tls_problem(p.tls_cert, p.tls_key)):
        problems.append(Problem("env/tls.cert", why))
    return problems


def tls_problem(cert: str, key: str) -> str | None:
    """Why a certificate and key cannot serve TLS (never quoting the key), or None."""
    import os
    import ssl
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cert_file, key_file = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_file, "w") as f:
            f.write(cert)
        with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(key)
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
        except (ssl.SSLError, OSError) as e:
            return f"tls.cert and tls.key do not load as a PEM certificate and its private key ({getattr(e, 'reason', None) or 'unreadable'})"
    return None

"""TF Serving's models.config (text-format ModelServerConfig) as typed model configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format

from agent.serving.protos import model_server_config_pb2


class ConfigError(Exception):
    """A models.config that cannot be used; the message says which file/model and why."""


@dataclass(frozen=True)
class VersionPolicy:
    """Which numeric versions of a model to serve: latest N, all, or specific ones."""

    kind: str = "latest"  # latest | all | specific
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: set[int]) -> set[int]:
        """The versions to serve out of those present on disk."""
        if self.kind == "all":
            return set(available)
        if self.kind == "specific":
            return set(self.versions) & available
        return set(sorted(available)[-self.num_versions:]) if available else set()


@dataclass(frozen=True)
class ModelConfig:
    """One model of models.config: its name, where its versions live, and how to pick them."""

    name: str
    base_path: Path
    platform: str = "tensorflow"
    policy: VersionPolicy = field(default_factory=VersionPolicy)
    labels: tuple[tuple[str, int], ...] = ()

    def label_version(self, label: str) -> int | None:
        """The version a label points at, or None for an unknown label."""
        return dict(self.labels).get(label)


def _policy(proto) -> VersionPolicy:
    choice = proto.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        return VersionPolicy("specific", versions=tuple(sorted(set(proto.specific.versions))))
    if choice == "latest":
        return VersionPolicy("latest", num_versions=max(1, proto.latest.num_versions))
    return VersionPolicy()


def from_proto(proto: model_server_config_pb2.ModelServerConfig, where: str = "models.config") -> list[ModelConfig]:
    """Typed model configs of a ModelServerConfig message; ConfigError says what is wrong."""
    if proto.WhichOneof("config") == "custom_model_config":
        raise ConfigError(f"{where}: custom_model_config is not supported, use model_config_list")
    models: list[ModelConfig] = []
    seen: set[str] = set()
    for i, c in enumerate(proto.model_config_list.config):
        if not c.name:
            raise ConfigError(f"{where}: config #{i + 1} has no name")
        if c.name in seen:
            raise ConfigError(f"{where}: model {c.name!r} is listed twice")
        if not c.base_path:
            raise ConfigError(f"{where}: model {c.name!r} has no base_path")
        seen.add(c.name)
        models.append(
            ModelConfig(
                name=c.name,
                base_path=Path(c.base_path).absolute(),
                platform=c.model_platform or "tensorflow",
                policy=_policy(c.model_version_policy),
                labels=tuple(sorted(c.version_labels.items())),
            )
        )
    return models


def parse_models_config(text: str, where: str = "models.config") -> list[ModelConfig]:
    """Typed model configs of models.config text (TF Serving's protobuf text format)."""
    try:
        proto = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ConfigError(f"{where}: {e}") from None
    return from_proto(proto, where)


def read_models_config(path: Path) -> list[ModelConfig]:
    """Read and parse a models.config file."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}") from None
    return parse_models_config(text, str(path))


def confine(configs: list[ModelConfig], root: Path, where: str = "models.config") -> None:
    """ConfigError unless every base_path lies inside `root` (symlinks resolved): a
    config the server accepts never makes it read outside the models root."""
    top = root.resolve()
    for c in configs:
        if not c.base_path.resolve().is_relative_to(top):
            raise ConfigError(f"{where}: model {c.name!r}: base_path {str(c.base_path)!r} is outside the models root {str(top)!r}")

"""Shared pieces of the model_repo tests: `minio` on PATH (a real MinIO where one is
installed, else the test double in tests/harness/minio_double/), repository trees, an operator's
boto3 client, and ONNX models to push."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

MINIO_DOUBLE_DIR = Path(__file__).parent / "minio_double"
ACCESS_KEY = "repo-test-access"
SECRET_KEY = "repo-test-secret-not-a-default"
REPO_ENV = {"s3.type": "minio", "s3.access.key": ACCESS_KEY, "s3.secret.key": SECRET_KEY}


@pytest.fixture
def minio_on_path(monkeypatch) -> str:
    """The `minio` the agents will run: a real one on PATH, else the test double."""
    if shutil.which("minio") is None:
        monkeypatch.setenv("PATH", f"{MINIO_DOUBLE_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("MINIO_DOUBLE_PYTHON", sys.executable)
    found = shutil.which("minio")
    assert found, "no minio on PATH"
    return found


def is_minio_double(minio: str) -> bool:
    """True when `minio` is the test double, not a real MinIO."""
    return Path(minio).resolve() == (MINIO_DOUBLE_DIR / "minio").resolve()


def path_without_minio() -> str:
    """PATH with every directory that holds a `minio` left out."""
    return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not (Path(d) / "minio").exists())


def repo_client(ip: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY):
    """A plain boto3 client of the repo node's MinIO, as an operator's script would use."""
    return boto3.client("s3", endpoint_url=f"http://{ip}:9000", aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name="us-east-1",
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"}))


def half_plus(offset: float) -> bytes:
    """An ONNX model y = 0.5 * x + offset with half_plus_two's signatures."""
    from onnx import numpy_helper
    import numpy as np

    from agent.serving.builtin_models import half_plus_two_model

    model = half_plus_two_model()
    for i, init in enumerate(model.graph.initializer):
        if init.name == "two":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(offset, dtype=np.float32), "two"))
    return model.SerializeToString()


def push_version(client, name: str, version: int, model: bytes, bucket: str = "models") -> None:
    """Upload one version of a model in TF Serving's layout, as an operator would."""
    client.put_object(Bucket=bucket, Key=f"{name}/{version}/model.onnx", Body=model)

"""Build step: the wheel carries the project's top-level files as package data.

The agent reads templates/, config_schema.json and examples/ at run time, and a platform
image installs hooks/, systemd/, platform/ and docs/ from the package. They stay at the
checkout's top level (the product's layout); building copies them into
agent/_resources/ of the build, so an installed wheel finds them with
importlib.resources (agent/paths.py). Metadata lives in setup.cfg.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PACKAGED_FILES_DIR = "agent/_resources"  # agent/paths.py reads it under this name
# What the wheel carries, relative to the top level; platform/generate.py is a
# development tool, not a file the platform takes.
PROJECT_FILES = (
    "config_schema.json",
    "templates",
    "examples",
    "hooks",
    "systemd",
    "docs",
    "platform/config.json",
    "platform/cluster.json.mustache",
    "platform/locale",
)


class BuildWithProjectFiles(build_py):
    """build_py that also copies the project's top-level files into the package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads the checkout's top level itself
        target = Path(self.build_lib) / PACKAGED_FILES_DIR
        shutil.rmtree(target, ignore_errors=True)
        for rel in PROJECT_FILES:
            src, dst = ROOT / rel, target / rel
            if not src.exists():
                raise FileNotFoundError(f"{rel} is missing from {ROOT}: the package would be incomplete")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                # copy2 keeps the mode: the hooks stay executable in the wheel.
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, dst)


setup(cmdclass={"build_py": BuildWithProjectFiles})

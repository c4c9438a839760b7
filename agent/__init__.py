"""Inference Engine node agent."""

from pathlib import Path

__version__ = "0.1.0"

# Top-level project files (templates, schema, examples) live beside the package;
# the project is installed editable (`pip install -e .`), as the README says.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

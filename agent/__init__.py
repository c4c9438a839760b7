"""Inference Engine node agent."""

# The one place the version is written: setup.cfg reads it (attr:), and `--version`,
# status, the console and the platform files show it.
__version__ = "0.1.0"

# Top-level project files (templates, schema, examples, hooks, units, platform files):
# the checkout's top level, or the copy an installed wheel carries (agent/paths.py).
from agent.paths import PROJECT_FILES as PROJECT_ROOT  # noqa: E402

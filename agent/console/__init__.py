"""The web console on port 8090: logs, models and cluster state, read-only."""

from agent.console.app import create_app, start_console
from agent.console.context import ConsoleContext

__all__ = ["ConsoleContext", "create_app", "start_console"]

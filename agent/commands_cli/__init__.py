"""Subcommands of the node agent itself (run, up, render, validate, status)."""

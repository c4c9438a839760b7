"""Environment files (systemd's EnvironmentFile format, `KEY="value"` per line): how
secrets reach a process without its command line. Written mode 0600 by the plan, read
back by the local supervisor at each start; systemd reads the same format itself."""

from __future__ import annotations

from pathlib import Path


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("`", "\\`")
    return f'"{escaped}"'


def _unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    out, i, body = [], 0, text[1:-1]
    while i < len(body):
        if body[i] == "\\" and i + 1 < len(body):
            i += 1
        out.append(body[i])
        i += 1
    return "".join(out)


def env_lines(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]], what: str) -> list[str]:
    """`KEY="value"` lines; ValueError naming `what` and the variable (never its value)
    for a name that is not an identifier or a value with a control character."""
    lines = []
    for key, value in pairs:
        if not key.isidentifier():
            raise ValueError(f"{what}: environment variable name {key!r} is not valid")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"{what}: the value of {key} contains a control character (a line break?)")
        lines.append(f"{key}={_quote(value)}")
    return lines


def render_env(pairs: tuple[tuple[str, str], ...] | list[tuple[str, str]], what: str, header: str = "") -> bytes:
    """A whole environment file for `pairs`."""
    head = [f"# {line}" for line in header.splitlines()]
    return ("\n".join(head + env_lines(pairs, what)) + "\n").encode()


def read_env(path: Path) -> dict[str, str]:
    """The variables of an environment file written by `render_env` (comments skipped)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = _unquote(value.strip())
    return out

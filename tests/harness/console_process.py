"""A console-only server in a child process, for the console benchmarks: the child serves
a ConsoleContext until its stdin closes; the parent starts it and waits until it serves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any


def serve_console(ctx: Any, host: str, port: int) -> None:
    """Child side: serve `ctx` on host:port, say "ready" on stdout, stop when stdin closes."""
    from agent.console import start_console

    async def main() -> None:
        runner = await start_console(ctx, host, port)
        print("ready", flush=True)
        try:
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        finally:
            await runner.cleanup()

    asyncio.run(main())


class ConsoleProcess:
    """Parent side: `with ConsoleProcess([script, args...]) as child:` runs the script
    with this Python and returns once it printed "ready"; closing ends it."""

    def __init__(self, argv: list[str]):
        self.argv = argv

    def __enter__(self) -> subprocess.Popen:
        self.child = subprocess.Popen([sys.executable, *self.argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        assert self.child.stdout is not None
        for line in self.child.stdout:  # the console's log lines come first
            if line.strip() == "ready":
                return self.child
        self.__exit__()
        raise SystemExit(f"the console did not start: {' '.join(self.argv)}")

    def __exit__(self, *exc: object) -> None:
        assert self.child.stdin is not None
        self.child.stdin.close()
        try:
            self.child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()

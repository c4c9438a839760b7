#!/usr/bin/env python3
"""Test double of `systemctl` (no systemd runs as PID 1 in the test environment).

It records every call, one JSON argv per line, in $SYSTEMCTL_DOUBLE_DIR/calls.jsonl and
keeps each unit's state in $SYSTEMCTL_DOUBLE_DIR/units.json: `start`/`restart` make a
unit active (with a made-up pid and a restart count), `stop` inactive, `show` prints
ActiveState, MainPID and NRestarts as systemctl does. Nothing is run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Record the call and answer it."""
    home = Path(os.environ["SYSTEMCTL_DOUBLE_DIR"])
    with open(home / "calls.jsonl", "a") as f:
        f.write(json.dumps(argv) + "\n")
    state_file = home / "units.json"
    units = json.loads(state_file.read_text()) if state_file.exists() else {}
    verb, *rest = argv
    unit = next((a for a in rest if not a.startswith("-")), "")
    current = units.get(unit, {"ActiveState": "inactive", "MainPID": 0, "NRestarts": 0})
    if verb in ("start", "restart"):
        was_active = current["ActiveState"] == "active"
        current = {"ActiveState": "active", "MainPID": 4000 + len(units) + current["NRestarts"] * 10,
                   "NRestarts": current["NRestarts"] + (1 if was_active else 0)}
    elif verb == "stop":
        current = {**current, "ActiveState": "inactive", "MainPID": 0}
    elif verb == "show":
        print(f"ActiveState={current['ActiveState']}\nMainPID={current['MainPID']}\nNRestarts={current['NRestarts']}")
        return 0
    elif verb != "set-property":
        print(f"systemctl double: unsupported verb {verb}", file=sys.stderr)
        return 1
    units[unit] = current
    state_file.write_text(json.dumps(units))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

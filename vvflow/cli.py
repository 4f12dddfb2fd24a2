"""The `vvflow` command line's entry point.

`vvflow stage ...` runs once per stage per video, so it goes straight to the built-in
stage without importing the orchestrator (settings, watcher, worker); every other
command loads `vvflow.commands`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) >= 2 and args[0] == "stage":
        from vvflow.stages import STAGES  # noqa: PLC0415 (the point: import only this)

        if args[1] in STAGES:
            return STAGES[args[1]](args[2:])
    from vvflow.commands import main as commands_main  # noqa: PLC0415

    return commands_main(args)

"""vvflow's built-in stages, each an ordinary command: ``vvflow stage NAME ARGS...``.

``STAGES`` maps a stage name to its ``main(argv) -> exit code``. The stage modules are
imported on first call, so importing this package stays cheap for the rest of vvflow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def _lazy_main(module: str) -> Callable[[list[str]], int]:
    def main(argv: list[str]) -> int:
        entry: Callable[[list[str]], int] = importlib.import_module(module).main
        return entry(argv)

    main.__name__ = main.__qualname__ = f"{module.rsplit('.', 1)[-1]}_main"
    return main


STAGES: dict[str, Callable[[list[str]], int]] = {
    "scan": _lazy_main("vvflow.stages.scan"),
    "summarize": _lazy_main("vvflow.stages.summarize"),
    "logline": _lazy_main("vvflow.stages.logline"),
}

__all__ = ["STAGES"]

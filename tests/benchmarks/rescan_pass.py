"""Time one rescan of ``input/pending/`` by vvflow's daemon, the pass that stands where
the seed hashed every file.

Run as ``python -m tests.benchmarks.rescan_pass ROOT``: builds the daemon for ROOT as
``vvflow run`` does (without starting its observer or workers, so nothing is claimed)
and prints ``{"seconds": ..., "tracked": ...}`` for its first rescan, the one that
stats every candidate.
"""

from __future__ import annotations

import json
import sys
import time

from vvflow.config import load_settings
from vvflow.daemon import Daemon
from vvflow.worker import Worker


def main(argv: list[str]) -> int:
    daemon = Daemon(Worker(load_settings(root_flag=argv[0])))
    started = time.perf_counter()
    daemon.rescan(time.monotonic())
    seconds = time.perf_counter() - started
    sys.stdout.write(json.dumps({"seconds": seconds, "tracked": len(daemon.stability)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

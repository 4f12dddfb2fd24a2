"""The seed design's pass, re-implemented faithfully, for the benchmark to time.

The seed's orchestrator woke every 300 seconds, read ``processed_videos.log`` into a set,
SHA-256-hashed every video in the input folder (read in chunks) and ran the pipeline on
each digest it had not seen. This module is that pass without the pipeline: what it
costs just to find out that there is nothing new to do.

Run as ``python -m tests.benchmarks.seed INPUT_DIR LOG``: prints ``{"seconds": ...,
"hashed": ..., "new": ...}`` for one timed pass.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

#: The seed polled every 300 s; a video dropped at a random moment waits half of it.
POLL_SECONDS = 300.0
#: The seed read in chunks; 1 MiB is the most generous size for it (fewest calls).
CHUNK = 1 << 20
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")


def read_log(log: Path) -> set[str]:
    """The digests the seed recorded as processed, one per line."""
    try:
        with log.open(encoding="utf-8") as handle:
            return {line.strip() for line in handle if line.strip()}
    except FileNotFoundError:
        return set()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def one_pass(input_dir: Path, log: Path) -> tuple[int, list[Path]]:
    """One wake-up of the seed: (videos hashed, videos not yet processed)."""
    processed = read_log(log)
    hashed = 0
    new: list[Path] = []
    for name in sorted(os.listdir(input_dir)):
        path = input_dir / name
        if not name.lower().endswith(VIDEO_SUFFIXES) or not path.is_file():
            continue
        hashed += 1
        if sha256_of(path) not in processed:
            new.append(path)
    return hashed, new


def main(argv: list[str]) -> int:
    input_dir, log = Path(argv[0]), Path(argv[1])
    started = time.perf_counter()
    hashed, new = one_pass(input_dir, log)
    seconds = time.perf_counter() - started
    sys.stdout.write(json.dumps({"seconds": seconds, "hashed": hashed, "new": len(new)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

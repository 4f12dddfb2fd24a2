"""A stage with a folder output, for the tests:
`python folder_stage.py MODE OUTPUT FOLDER LOG [INPUT_FOLDER]`.

Appends one JSON line per run to LOG (what it found in FOLDER when it started), then:

  ok          write FOLDER/frames/0001.txt .. 0003.txt and FOLDER/sheet.txt, then OUTPUT
  fail-once   write half of the folder and exit 1 on the first run for this video, then ok
  symlink     write the folder with a symlink to /etc/hostname in it, then OUTPUT
  slow        write half of the folder, print its progress, sleep 30 s (to be killed)
  read        read INPUT_FOLDER/sheet.txt (an earlier stage's folder) into OUTPUT
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    mode, output, folder, log, *rest = sys.argv[1:]
    out, where = Path(output), Path(folder)
    video = os.environ.get("VVFLOW_NAME", "?")
    before = sorted(p.name for p in where.iterdir()) if where.is_dir() else None
    runs = Path(log)
    earlier = [json.loads(line) for line in runs.read_text().splitlines()] if runs.exists() else []
    with runs.open("a") as fh:
        fh.write(json.dumps({"mode": mode, "video": video, "found": before,
                             "env": os.environ.get("VVFLOW_OUTPUT_DIR")}) + "\n")  # fmt: skip
    if mode == "read":
        out.write_text((Path(rest[0]) / "sheet.txt").read_text())
        return 0
    (where / "frames").mkdir()
    (where / "frames" / "0001.txt").write_text(f"{video} 1")
    if mode == "slow":
        sys.stderr.write("vvflow:progress 0.5 half of the frames\n")
        sys.stderr.flush()
        time.sleep(30)
    if mode == "fail-once" and not any(r["video"] == video for r in earlier):
        sys.stderr.write("failed half-way\n")
        return 1
    for i in (2, 3):
        (where / "frames" / f"{i:04d}.txt").write_text(f"{video} {i}")
    (where / "sheet.txt").write_text(f"sheet of {video}")
    if mode == "symlink":
        os.symlink("/etc/hostname", where / "leak.txt")
    out.write_text(json.dumps({"video": video}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

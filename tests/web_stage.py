"""A stage program for the web page's tests: `python web_stage.py MODE OUTPUT [FOLDER]`.

It writes what the built-in stages write, in small (the fields the video page reads),
fast and without reading the video:

  scan        FOLDER/scene-001.jpg, scene-002.jpg, contact-sheet.jpg (real JPEGs) and
              OUTPUT, an analytic JSON with two scenes; a video whose name holds "fail"
              fails here (a traceback on stderr, exit 1)
  summarize   OUTPUT, a summary JSON (summary, captions, transcript, scenes); FOLDER
              gets subtitles.vtt and timeline.otio
  logline     OUTPUT, a logline JSON
  hold:FILE   say its progress (0.5, "halfway"), wait until FILE exists, then as logline
  tag         OUTPUT, a file of no known type, and FOLDER/deep/note.txt: outputs that
              are not the built-in ones
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time

#: An 16x8 JPEG (OpenCV, quality 50).
JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERX"
    "RTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2Nj"
    "Y2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAIABADASIAAhEBAxEB/8QAHwAAAQUBAQEBAQEAAAAAAAAAAAEC"
    "AwQFBgcICQoL/8QAtRAAAgEDAwIEAwUFBAQAAAF9AQIDAAQRBRIhMUEGE1FhByJxFDKBkaEII0KxwRVS0fAkM2Jygg"
    "kKFhcYGRolJicoKSo0NTY3ODk6Q0RFRkdISUpTVFVWV1hZWmNkZWZnaGlqc3R1dnd4eXqDhIWGh4iJipKTlJWWl5iZ"
    "mqKjpKWmp6ipqrKztLW2t7i5usLDxMXGx8jJytLT1NXW19jZ2uHi4+Tl5ufo6erx8vP09fb3+Pn6/8QAHwEAAwEBAQEB"
    "AQEBAQAAAAAAAAECAwQFBgcICQoL/8QAtREAAgECBAQDBAcFBAQAAQJ3AAECAxEEBSExBhJBUQdhcRMiMoEIFEKRobHB"
    "CSMzUvAVYnLRChYkNOEl8RcYGRomJygpKjU2Nzg5OkNERUZHSElKU1RVVldYWVpjZGVmZ2hpanN0dXZ3eHl6goOEhYaH"
    "iImKkpOUlZaXmJmaoqOkpaanqKmqsrO0tba3uLm6wsPExcbHyMnK0tPU1dbX2Nna4uPk5ebn6Onq8vP09fb3+Pn6/9oA"
    "DAMBAAIRAxEAPwDLoooriPpj/9k="
)
SCENES = [
    {"index": 1, "start_s": 0.0, "end_s": 1.0, "duration_s": 1.0, "start_timecode": "00:00:00.000",
     "end_timecode": "00:00:01.000", "keyframe": "scene-001.jpg"},
    {"index": 2, "start_s": 1.0, "end_s": 2.5, "duration_s": 1.5, "start_timecode": "00:00:01.000",
     "end_timecode": "00:00:02.500", "keyframe": "scene-002.jpg"},
]  # fmt: skip


def write(path: str, value: object) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(value, fh)


def main() -> int:
    mode, output, *rest = sys.argv[1:]
    name = os.environ["VVFLOW_NAME"]
    if mode == "scan":
        if "fail" in name:
            sys.stderr.write("Traceback (most recent call last):\nRuntimeError: cannot decode\n")
            return 1
        folder = rest[0]
        for file in ("scene-001.jpg", "scene-002.jpg", "contact-sheet.jpg"):
            with open(os.path.join(folder, file), "wb") as fh:
                fh.write(JPEG)
        write(output, {"schema_version": 2, "source": {"name": name}, "scene_count": 2,
                       "scenes": SCENES, "contact_sheet": "contact-sheet.jpg"})  # fmt: skip
        return 0
    if mode == "summarize":
        scenes = [
            {**scene, "on_screen_text": ["OPEN <b>DAY</b>"],
             "description": f"Scene {scene['index']}: a <i>red</i> shot of {name}"}
            for scene in SCENES
        ]  # fmt: skip
        with open(os.path.join(rest[0], "subtitles.vtt"), "w", encoding="utf-8") as fh:
            fh.write("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\nhello <there>\n")
        with open(os.path.join(rest[0], "timeline.otio"), "w", encoding="utf-8") as fh:
            fh.write('{"OTIO_SCHEMA": "Timeline.1"}\n')
        write(output, {
            "schema_version": 3, "kind": "narrated video", "scene_count": 2, "scenes": scenes,
            "summary": f"A summary of {name} with <script>alert('summary')</script> in it.",
            "captions": [{"text": "OPEN <b>DAY</b>", "first_s": 0.2, "last_s": 2.1}],
            "transcript": {"status": "transcribed", "text": "The old bridge opens next spring."},
        })  # fmt: skip
        return 0
    if mode == "tag":
        os.mkdir(os.path.join(rest[0], "deep"))
        with open(os.path.join(rest[0], "deep", "note.txt"), "w", encoding="utf-8") as fh:
            fh.write(f"a note on {name}\n")
        with open(output, "wb") as fh:
            fh.write(b"<html><script>alert('tag')</script></html>")
        return 0
    if mode.startswith("hold:"):
        sys.stderr.write("vvflow:progress 0.5 halfway\n")
        sys.stderr.flush()
        deadline = time.monotonic() + 60
        while not os.path.exists(mode[5:]) and time.monotonic() < deadline:
            time.sleep(0.05)
    write(output, {"schema_version": 1, "logline": f"A short film called {name}.", "word_count": 5})
    return 0


if __name__ == "__main__":
    sys.exit(main())

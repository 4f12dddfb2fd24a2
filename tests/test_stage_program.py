"""The fast-starting pieces of the tests' stage programs (tests/stage_program.py) do what
argparse, json, random and uuid would."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import STAGECMD
from tests.stage_program import json_text, parse_args, run_id, uniform
from tests.test_adversarial_support import HOSTILE

TIMED = Path(__file__).with_name("timed_stage.py")

VALUES: list[object] = [
    {"event": "start", "stage": "scan", "video": "a.mp4", "pid": 1234, "ppid": 1,
     "run": "ab" * 16, "t": 1764288000.123456, "argv": ["sleep:0-0.05", "--log", "x"]},
    {"video": "caf\u00e9 \u65e5\u672c \U0001f3ac.mp4", "quote": 'a "b" \\ c\n\t\x00\x1f'},
    {"video": os.fsdecode(b"bad \xff\xfe name.mp4"), "size": 0, "ok": True, "no": False},
    {"none": None, "nested": {"env": {"VVFLOW_NAME": "x"}, "list": [1, 2.5, -3, 1e-07]}},
    {"big": 2**70, "float": 0.1, "tuple": (1, "two"), "empty": {}, "nothing": []},
]  # fmt: skip


@pytest.mark.parametrize("value", VALUES)
def test_json_text_is_json_dumps_to_the_character(value: object) -> None:
    assert json_text(value) == json.dumps(value)
    assert json.loads(json_text(value)) == json.loads(json.dumps(value))


def test_json_text_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError):
        json_text({1: "a"})
    with pytest.raises(TypeError):
        json_text({"set": {1}})


def _argparse(argv: list[str]) -> dict[str, str | None]:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode")
    parser.add_argument("--log", required=True)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--pids")
    parser.add_argument("input")
    parser.add_argument("output")
    return vars(parser.parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["ok", "--log", "/l", "--stage", "scan", "/in put.mp4", "/out.json"],
        ["sleep:0-0.5", "--log", "/l", "--stage", "s", "--pids", "/p", "/in", "/out"],
        ["--stage", "s", "--log=/l", "m", "/in", "/out"],
        ["m", "/in", "--log", "/l", "/out", "--stage", "s"],
        ["bad-if:x", "--log", "/l", "--stage", "s", os.fsdecode(b"/\xff.mp4"), "/o"],
    ],
)
def test_parse_args_reads_what_argparse_reads(argv: list[str]) -> None:
    args = parse_args(argv, ("mode", "input", "output"), ("log", "stage"), ("pids",))
    assert vars(args) == _argparse(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["m", "--stage", "s", "/in", "/out"],  # --log missing
        ["m", "--log", "/l", "--stage", "s", "/in"],  # an argument missing
        ["m", "--log", "/l", "--stage", "s", "/in", "/out", "/more"],  # one too many
        ["m", "--stage", "s", "/in", "/out", "--log"],  # an option without its value
    ],
)
def test_parse_args_exits_2_on_a_usage_error(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv, ("mode", "input", "output"), ("log", "stage"), ("pids",))
    assert exit_info.value.code == 2


def test_uniform_and_run_id() -> None:
    draws = [uniform(0.05, 0.5) for _ in range(2000)]
    assert all(0.05 <= x < 0.5 for x in draws)
    assert min(draws) < 0.1 and max(draws) > 0.45  # spread over the whole range
    assert uniform(0.3, 0.3) == 0.3
    ids = {run_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch("[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize(
    ("program", "steps"), [(STAGECMD, ["sleep:0.01"]), (HOSTILE, ["sleep:0.01"]),
                           (TIMED, ["--seconds", "0.01"])],
)  # fmt: skip
def test_stage_programs_import_nothing_slow(
    program: Path, steps: list[str], tmp_path: Path
) -> None:
    """What made each start cost 80 ms of CPU instead of 20 ms stays out of the stages."""
    video = tmp_path / "in.mp4"
    video.write_bytes(b"video")
    proc = subprocess.run(
        [sys.executable, "-S", "-X", "importtime", str(program), *steps,
         "--log", str(tmp_path / "log"), "--stage", "scan", str(video), str(tmp_path / "out")],
        capture_output=True, text=True, check=True, env={**os.environ, "VVFLOW_NAME": "in.mp4"},
    )  # fmt: skip
    loaded = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "stage_program" in loaded
    output = json.loads((tmp_path / "out").read_bytes())
    assert output.get("size", 5) == 5 and output.get("video", "in.mp4") == "in.mp4", output
    assert [json.loads(line)["stage"] for line in (tmp_path / "log").read_text().splitlines()]
    slow = {"argparse", "json", "pathlib", "random", "re", "subprocess", "uuid"}
    assert loaded & slow == set(), loaded & slow

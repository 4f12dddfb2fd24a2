"""Configuration: precedence, and every error as one line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import Root


def _one_line_error(proc_stderr: str) -> str:
    lines = proc_stderr.strip().splitlines()
    assert len(lines) == 1, proc_stderr
    assert "Traceback" not in proc_stderr
    return lines[0]


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("stable_secs = 1\n", "stable_secs: Extra inputs are not permitted"),
        ("workers = 'many'\n", "workers: Input should be a valid integer"),
        ("workers = 0\n", "workers: Input should be greater than or equal to 1"),
        ("observer = 'magic'\n", "observer: Input should be 'auto', 'inotify' or 'polling'"),
        ("workers = \n", "invalid TOML"),
        ('[[stages]]\nname = "scan"\ncommand = ["x", "{output}"]\noutput = "a/{stem}.json"\n'
         'timeout = 5\n', "stages.0.timeout: Extra inputs are not permitted"),
        ('[[stages]]\nname = "scan"\ncommand = ["x", "{vide}"]\noutput = "a/{stem}.json"\n',
         "unknown placeholder {vide}"),
        ('[[stages]]\nname = "scan"\ncommand = ["x", "{logline}"]\noutput = "a/{stem}.json"\n'
         '[[stages]]\nname = "logline"\ncommand = ["x"]\noutput = "b/{stem}.json"\n',
         "unknown placeholder {logline} (a later stage)"),
        ('[[stages]]\nname = "video"\ncommand = ["x"]\noutput = "a/{stem}.json"\n',
         "stages.0.name: 'video' is a placeholder name"),
        ('[[stages]]\nname = "scan"\ncommand = ["x"]\noutput = "a/out.json"\n',
         "must contain {stem} or {name}"),
        ('[[stages]]\nname = "scan"\ncommand = ["x"]\noutput = "../{stem}.json"\n',
         "relative to the storage root"),
        ('[[stages]]\nname = "scan"\ncommand = []\noutput = "a/{stem}.json"\n',
         "stages.0.command: List should have at least 1 item"),
        ('[[stages]]\nname = "scan"\ncommand = ["x"]\noutput = "a/{stem}.json"\nattempts = 0\n',
         "stages.0.attempts: Input should be greater than or equal to 1"),
        ('[[stages]]\nname = "a"\ncommand = ["x"]\noutput = "a/{stem}.json"\n'
         '[[stages]]\nname = "a"\ncommand = ["x"]\noutput = "b/{stem}.json"\n',
         "stage name 'a' is used twice"),
    ],
)  # fmt: skip
def test_invalid_config_file_exits_2_with_one_line(root: Root, toml: str, expected: str) -> None:
    (root.path / "vvflow.toml").write_text(toml)
    for command in (["once"], ["status"], ["retry", "--all"]):
        proc = root.vvflow(*command, check=2)
        assert expected in _one_line_error(proc.stderr)
    doctor = root.vvflow("doctor", check=1)
    assert expected in doctor.stdout


def test_invalid_environment_and_flags_exit_2(root: Root, tmp_path: Path) -> None:
    proc = root.vvflow("once", env={"VVFLOW_WORKERS": "abc"}, check=2)
    assert "workers: Input should be a valid integer" in _one_line_error(proc.stderr)
    proc = root.vvflow("once", "--workers", "zero", check=2)
    assert "--workers: invalid int value" in _one_line_error(proc.stderr)
    proc = root.vvflow("once", "--config", str(tmp_path / "missing.toml"), check=2)
    assert "configuration file not found" in _one_line_error(proc.stderr)
    proc = root.vvflow("bogus", check=2)
    assert "invalid choice" in _one_line_error(proc.stderr)


def test_precedence_defaults_file_env_flags(root: Root, tmp_path: Path) -> None:
    from vvflow.config import load_settings

    config = tmp_path / "elsewhere.toml"
    config.write_text("workers = 3\nstable_seconds = 5\nrescan_seconds = 7\n")
    monkey_env = {"VVFLOW_STABLE_SECONDS": "4", "VVFLOW_CONFIG": str(config)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in monkey_env.items():
            mp.setenv(key, value)
        mp.setenv("VIDEO_STORAGE_ROOT", str(root.path))
        settings = load_settings(workers=5)
    assert settings.root == root.path
    assert settings.workers == 5  # flag beats file
    assert settings.stable_seconds == 4  # env beats file
    assert settings.rescan_seconds == 7  # file beats default
    assert settings.lease_seconds == 60  # default
    assert [s.name for s in settings.stages] == ["scan", "summarize", "logline"]


def test_root_from_environment_and_extensions_from_env(root: Root) -> None:
    root.configure()
    root.drop("a.webm")
    root.drop("b.mp4")
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
    env["VIDEO_STORAGE_ROOT"] = str(root.path)
    env["VVFLOW_EXTENSIONS"] = ".webm, .mkv"
    proc = subprocess.run([sys.executable, "-m", "vvflow", "once"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (root.path / "input/completed").iterdir()) == ["a.webm"]
    data = json.loads(
        subprocess.run([sys.executable, "-m", "vvflow", "status", "--json"], env=env,
                       capture_output=True, text=True, timeout=60, check=True).stdout
    )  # fmt: skip
    assert data["pending"] == 0 and data["completed"] == 1
    assert data["ignored"] == [{"name": "b.mp4", "reason": "not a video extension (.mp4)"}]

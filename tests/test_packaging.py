"""The README's promises: its test command is what CI runs, and the entry points work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _commands(readme: str) -> list[str]:
    return re.findall(r"```sh\n(.+?)\n```", readme)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    install_run, install_test = _commands(readme)[:2]
    assert "vvflow once" in install_run
    assert "pytest" in install_test
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert install_test in ci_lines


def test_module_entry_point_and_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "vvflow", "--version"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert proc.stdout.startswith("vvflow ")

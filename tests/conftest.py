"""Shared fixtures: a storage root, stage commands built from tests/stagecmd.py, and a
way to run the real `vvflow` command as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.gluster import GlusterVolume, Unavailable, gluster_volume, skip_reason
from tests.media import make_video

STAGECMD = Path(__file__).with_name("stagecmd.py")
STATES = ("pending", "processing", "completed", "failed")


def toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers, lists and bools are valid TOML


@dataclass
class Root:
    """A storage root under tmp_path, with helpers to configure and inspect it."""

    path: Path
    runlog: Path
    video_bytes: bytes

    def folder(self, state: str) -> Path:
        return self.path / "input" / state

    def drop(self, name: str, data: bytes | None = None) -> Path:
        """Put a video into pending/. Without `data`, each name gets its own content
        (the sample video plus a trailing tag), so that content identity never makes
        two test videos one; pass `data` to drop the same bytes twice."""
        target = self.folder("pending") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if data is None:
            data = self.video_bytes + b"\0vvflow-test:" + os.fsencode(name)
        target.write_bytes(data)
        return target

    def names(self, state: str) -> list[str]:
        folder = self.folder(state)
        if state == "processing":
            return sorted(
                p.name
                for inst in folder.iterdir()
                if inst.is_dir()
                for p in inst.iterdir()
                if not p.name.startswith(".")
            ) if folder.exists() else []  # fmt: skip
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []

    def stage(
        self, name: str, mode: str = "ok", *, output: str | None = None, inp: str = "{video}",
        **extra: Any,
    ) -> dict[str, Any]:  # fmt: skip
        folder = {"scan": "analytic", "summarize": "summaries", "logline": "loglines"}
        suffix = {"scan": "analytic", "summarize": "summary", "logline": "logline"}
        command = [sys.executable, str(STAGECMD), mode, "--log", str(self.runlog),
                   "--stage", name]  # fmt: skip
        if "pids" in extra:
            command += ["--pids", str(extra.pop("pids"))]
        return {
            "name": name,
            "command": [*command, inp, "{output}"],
            "output": output or f"{folder.get(name, name)}/{{stem}}.{suffix.get(name, name)}.json",
            "backoff_seconds": 0.0,
            "backoff_max_seconds": 0.0,
            **extra,
        }

    def three_stages(self, scan: str = "ok", summarize: str = "ok", logline: str = "ok",
                     **extra: Any) -> list[dict[str, Any]]:  # fmt: skip
        return [
            self.stage("scan", scan, **extra),
            self.stage("summarize", summarize, inp="{scan}", **extra),
            self.stage("logline", logline, inp="{summarize}", **extra),
        ]

    def configure(self, stages: list[dict[str, Any]] | None = None, **top: Any) -> Path:
        top.setdefault("stable_seconds", 0.0)
        lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
        for stage in stages or self.three_stages():
            lines.append("\n[[stages]]")
            lines += [f"{key} = {toml_value(value)}" for key, value in stage.items()]
        config = self.path / "vvflow.toml"
        config.write_text("\n".join(lines) + "\n")
        return config

    def runs(self) -> list[dict[str, Any]]:
        if not self.runlog.exists():
            return []
        with self.runlog.open(encoding="utf-8", errors="surrogateescape") as fh:
            return [json.loads(line) for line in fh]

    def report(self, name: str) -> dict[str, Any]:
        return json.loads((self.path / "reports" / f"{name}.json").read_bytes())

    def vvflow(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
               check: int | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("VVFLOW_")}
        full_env.pop("VIDEO_STORAGE_ROOT", None)
        full_env.update(env or {})
        command, *rest = args
        proc = subprocess.run(
            [sys.executable, "-m", "vvflow", command, "--root", str(self.path), *rest],
            capture_output=True, text=True, timeout=timeout, env=full_env,
            errors="surrogateescape",
        )  # fmt: skip
        if check is not None:
            assert proc.returncode == check, proc.stderr[-3000:]
        return proc

    def status(self) -> dict[str, Any]:
        proc = self.vvflow("status", "--json", check=0)
        data: dict[str, Any] = json.loads(proc.stdout)
        return data


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every process the tests start keeps its caches (the web page's catalog) in the
    session's temporary folder, never in the user's ~/.cache."""
    path = tmp_path_factory.mktemp("xdg-cache")
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


@pytest.fixture(scope="session")
def video_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = make_video(tmp_path_factory.mktemp("media") / "sample.mp4", seconds=0.5)
    return path.read_bytes()


@pytest.fixture(scope="session")
def gluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlusterVolume]:
    """A real GlusterFS volume mounted twice (tests/gluster.py), set up once per session;
    skips, saying why, where root, FUSE, namespaces or the gluster binaries are lacking."""
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        try:
            volume = stack.enter_context(gluster_volume(tmp_path_factory.mktemp("gluster")))
        except Unavailable as exc:
            pytest.skip(str(exc))
        print(f"\nGlusterFS volume up in {volume.setup_seconds:.1f}s: {volume.mounts}")
        yield volume


@pytest.fixture
def root(tmp_path: Path, video_bytes: bytes) -> Iterator[Root]:
    r = Root(tmp_path / "root", tmp_path / "runs.log", video_bytes)
    (r.path / "input" / "pending").mkdir(parents=True)
    yield r
    shutil.rmtree(tmp_path, ignore_errors=True)


def events(stderr: str) -> list[dict[str, Any]]:
    """The structured log lines vvflow wrote on stderr."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


RootFactory = Callable[[], Root]

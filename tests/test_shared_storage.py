"""The shared-storage protocol on local filesystems: what start-up and `doctor` say of
the root, a root on which no move could be made safe is refused, a double move is
logged and counted, and videos taken back from a dead instance go to the front of the
queue. The same protocol across two GlusterFS clients: tests/test_shared_gluster.py."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Root, events
from tests.test_adversarial_support import (
    Fleet,
    assert_settled,
    clean_env,
    hostile,
    stage_log,
    wait_for,
)
from vvflow import filesystem, instance


def test_doctor_and_start_up_name_the_filesystem_and_the_protocol(root: Root) -> None:
    root.configure([hostile(root, "scan")])
    doctor = root.vvflow("doctor", check=0).stdout
    fstype = filesystem.filesystem_type(root.path)
    assert f"filesystem: {fstype} (local); RENAME_NOREPLACE: yes; hard links: yes; " \
           "protocol: renameat2" in doctor, doctor  # fmt: skip
    forced = root.vvflow("doctor", env={"VVFLOW_RENAME": "link"}, check=0).stdout
    assert "protocol: rename+link (forced by VVFLOW_RENAME=link)" in forced, forced
    assert "filings: a rename to a private name, then link" in forced, forced

    root.drop("a.mp4")
    proc = root.vvflow("once", env={"VVFLOW_RENAME": "link"}, check=0)
    started = [e for e in events(proc.stderr) if e["event"] == "started"]
    assert len(started) == 1, proc.stderr[-2000:]
    assert started[0]["fstype"] == fstype
    assert started[0]["shared"] is False
    assert started[0]["rename_noreplace"] is True
    assert started[0]["protocol"].startswith("rename+link")
    assert root.names("completed") == ["a.mp4"]


def test_unsafe_mount_options_are_named() -> None:
    """Options under which instances read each other's heartbeats stale."""
    nfs = filesystem._unsafe_options("nfs4", ["rw", "nocto", "vers=4.2"])
    assert len(nfs) == 1 and "nocto" in nfs[0]
    assert filesystem._unsafe_options("nfs4", ["rw", "vers=4.2", "actimeo=3"]) == []
    cifs = filesystem._unsafe_options("cifs", ["rw", "cache=loose"])
    assert len(cifs) == 1 and "cache=strict" in cifs[0]
    assert filesystem._unsafe_options("cifs", ["rw", "cache=strict"]) == []
    assert filesystem._unsafe_options("ext4", ["rw", "nocto"]) == []


@pytest.fixture
def exfat(tmp_path: Path) -> Iterator[Path]:
    """An exFAT filesystem (no hard links) through its FUSE driver, on a loop device."""
    tools = ("mkfs.exfat", "mount.exfat-fuse", "losetup", "umount")
    if os.geteuid() != 0 or any(shutil.which(t) is None for t in tools):
        pytest.skip("needs root, losetup, mkfs.exfat (exfatprogs) and mount.exfat-fuse "
                    "(exfat-fuse) for a filesystem without hard links")  # fmt: skip
    image, mountpoint = tmp_path / "exfat.img", tmp_path / "exfat"
    with image.open("wb") as fh:
        fh.truncate(64 << 20)
    subprocess.run(["mkfs.exfat", str(image)], check=True, capture_output=True)
    mountpoint.mkdir()
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if loop.returncode != 0:
        pytest.skip(f"no loop device here: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        mounted = subprocess.run(["mount.exfat-fuse", device, str(mountpoint)],
                                 capture_output=True, text=True, check=False)  # fmt: skip
        if mounted.returncode != 0 or not os.path.ismount(mountpoint):
            pytest.skip(f"cannot mount exFAT with FUSE here: {mounted.stderr.strip()}")
        try:
            yield mountpoint
        finally:
            subprocess.run(["umount", str(mountpoint)], check=False)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


def test_a_root_without_noreplace_nor_hard_links_is_refused(
    exfat: Path, tmp_path: Path, video_bytes: bytes
) -> None:
    """exFAT's FUSE driver has neither RENAME_NOREPLACE nor hard links, so no move there
    could refuse to overwrite: start-up refuses with the reason, before any claim (it
    used to claim, run the stages, and then fail to file every video), and `doctor`
    fails with the same reason."""
    root = Root(exfat / "root", tmp_path / "runs.log", video_bytes)
    root.folder("pending").mkdir(parents=True)
    root.configure([hostile(root, "scan")], min_free_bytes=1 << 20)
    root.drop("a.mp4")
    refused = root.vvflow("once")
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "refusing to run on" in refused.stderr
    assert "RENAME_NOREPLACE: no (EINVAL); hard links: no" in refused.stderr
    assert "neither RENAME_NOREPLACE nor hard links work here" in refused.stderr
    assert root.names("pending") == ["a.mp4"], "nothing may move on a refused root"
    assert stage_log(root) == []
    doctor = root.vvflow("doctor")
    assert doctor.returncode != 0
    assert "FAIL unsafe: neither RENAME_NOREPLACE nor hard links" in doctor.stdout


#: Another client that moves the same file at the same moment as vvflow: when vvflow
#: links its privately renamed file to its destination, this audit hook gives the file
#: one more name first (what a second mover's link leaves on a filesystem where link
#: is not a lock). vvflow must say so in its log and count it in its metrics.
_DOUBLE = r"""
import os, sys
from pathlib import Path
extra = Path(sys.argv[1]) / "other-client-name.mp4"

done = []

def hook(event, args):
    if event == "os.link" and str(args[0]).endswith(".staged") and not done:
        done.append(True)  # before the link below, which audits too
        os.link(args[0], extra)

sys.addaudithook(hook)
os.environ["VVFLOW_RENAME"] = "link"
from vvflow import atomicfs, logs
from vvflow.layout import Layout
from vvflow.metrics import Metrics

logs.setup("INFO")
root = Path(sys.argv[1])
layout = Layout(root, [".mp4"])
metrics = Metrics(layout, lambda: {}, root / "hb")
(root / "j").mkdir()
src = root / "a.mp4"
src.write_bytes(b"video")
atomicfs.move(src, iter([root / "b.mp4"]), journal=root / "j")
value = metrics.registry.get_sample_value("vvflow_double_claims_total")
sys.stdout.write(f"{value}\n")
"""


def test_a_double_move_is_logged_as_an_error_and_counted(tmp_path: Path) -> None:
    script = tmp_path / "double.py"
    script.write_text(_DOUBLE)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True,
                          text=True, env=clean_env({"PYTHONPATH": os.getcwd()}), timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "1.0", proc.stdout + proc.stderr[-2000:]
    double = [e for e in events(proc.stderr) if e["event"] == "double_claim"]
    assert len(double) == 1, proc.stderr[-2000:]
    assert double[0]["level"] == "error"
    assert double[0]["names_before"] == 1 and double[0]["names_after"] == 2
    # Nothing deleted: either name may be the one the other mover keeps.
    assert (tmp_path / "b.mp4").read_bytes() == b"video"
    assert (tmp_path / "other-client-name.mp4").exists()


def test_videos_taken_back_from_a_dead_instance_go_to_the_front(root: Root, tmp_path: Path) -> None:
    """A holds r1 and r2 and dies (SIGKILL); B, one worker, has a backlog of twelve.
    B takes A's videos back and runs them next, before its backlog: they waited once
    already."""
    gate = tmp_path / "gate"
    root.configure(
        [hostile(root, "scan", f"wait:{gate}")],
        stable_seconds=0.2, rescan_seconds=0.5, lease_seconds=3.0, workers=2,
    )  # fmt: skip
    with Fleet(root, tmp_path) as fleet:
        root.drop("r1.mp4")
        root.drop("r2.mp4")
        a = fleet.start("run")
        wait_for(lambda: {r["video"] for r in stage_log(root)} == {"r1.mp4", "r2.mp4"},
                 what="A to start r1 and r2")  # fmt: skip
        backlog = [f"q{n:02}.mp4" for n in range(12)]
        for name in backlog:
            root.drop(name)
        b = fleet.start("run", env={"VVFLOW_WORKERS": "1"})
        wait_for(lambda: len(stage_log(root)) == 3, what="B to start its first video")
        wait_for(lambda: '"rescan_found"' in b.text(), what="B to find its backlog")
        a.kill()
        wait_for(lambda: any(e["event"] == "recovered" and e["videos"] for e in b.events()),
                 what="B to take back A's videos")  # fmt: skip
        gate.touch()
        wait_for(lambda: len(root.names("completed")) == 14, timeout=60,
                 what="every video completed")  # fmt: skip
        b.stop()
    starts = [r["video"] for r in stage_log(root) if r["event"] == "start"]
    first_of_b = starts[2]
    assert first_of_b in backlog
    # A's two runs, B's first; B had handed two more of its backlog to its worker's
    # queue (2 x workers, counting the one running) before A died; the next two are
    # the recovered ones, not the backlog's last.
    assert {"r1.mp4", "r2.mp4"} <= set(starts[3:7]), starts
    assert_settled(root, ["r1.mp4", "r2.mp4", *backlog], ["scan"])
    recovered = next(e for e in b.events() if e["event"] == "recovered" and e["videos"])
    assert sorted(recovered["videos"]) == ["r1.mp4", "r2.mp4"]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-S", "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_instance_of_another_machine_with_this_hostname_keeps_its_claims(
    root: Root, tmp_path: Path
) -> None:
    """Two machines with one hostname (cloned VMs, hosts all named `localhost`) share
    the initial PID namespace's inode number too: a pid of the other machine must never
    be looked up here. Its instances (one named by this vvflow with another boot id,
    one by an older vvflow without it) hold a claim each and beat; `vvflow once` here
    takes neither, though neither pid runs on this machine."""
    root.configure([hostile(root, "scan")], lease_seconds=2.0)
    boot = instance.this_boot()
    other_boot = "%08x" % (int(boot, 16) ^ 0xFFFFFFFF)
    host, ns, pid = instance.this_host(), instance.this_pid_namespace(), _dead_pid()
    folders = [
        root.folder("processing") / f"{host}-{other_boot}-{ns}-{pid}-12345",
        root.folder("processing") / f"{host}-{ns}-{pid}-12345",  # an older vvflow's name
    ]
    for number, folder in enumerate(folders):
        folder.mkdir(parents=True)
        (folder / ".heartbeat").write_bytes(b"%020d\n" % 0)
        (folder / f"held{number}.mp4").write_bytes(root.video_bytes + bytes([number]))
    stop = threading.Event()

    def beat() -> None:
        count = 0
        while not stop.wait(0.25):
            count += 1
            for folder in folders:
                with contextlib.suppress(FileNotFoundError):
                    (folder / ".heartbeat").write_bytes(b"%020d\n" % count)

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        proc = root.vvflow("once", check=0)
    finally:
        stop.set()
        beater.join()
    assert not [e for e in events(proc.stderr) if e["event"] == "recovered" and e["videos"]], (
        proc.stderr[-3000:]
    )
    for number, folder in enumerate(folders):
        assert (folder / f"held{number}.mp4").exists(), proc.stderr[-3000:]
    assert stage_log(root) == []


#: A network filesystem whose client cannot see, for a moment or for longer, a file it
#: has just renamed to its private name (what GlusterFS did to recovered videos): an
#: audit hook makes every link of a private name fail with ENOENT while a flag file
#: exists. The move must wait it out, or keep the file safe and finish later; never
#: report the source as taken by another mover, never lose it.
_INVISIBLE = r"""
import os, sys, time
from pathlib import Path
root = Path(sys.argv[1])
flag = root / "invisible"

def hook(event, args):
    if event == "os.link" and str(args[0]).endswith(".staged") and os.path.exists(flag):
        raise FileNotFoundError(2, "No such file or directory", str(args[0]))

sys.addaudithook(hook)
os.environ["VVFLOW_RENAME"] = "link"
from vvflow import atomicfs

(root / "j").mkdir()
(root / "src").mkdir()
(root / "dst").mkdir()
# 1. invisible for 0.4 s: the move waits and completes
a = root / "src" / "a.mp4"
a.write_bytes(b"a")
flag.touch()
import threading
threading.Timer(0.4, flag.unlink).start()
got = atomicfs.move(a, iter([root / "dst" / "a.mp4"]), journal=root / "j")
print("moved", got.name, (root / "dst" / "a.mp4").read_bytes() == b"a")
# 2. invisible for longer than the move waits: stranded, then finished later
b = root / "src" / "b.mp4"
b.write_bytes(b"b")
flag.touch()
try:
    atomicfs.move(b, iter([root / "dst" / "b.mp4"]), journal=root / "j")
except FileNotFoundError:
    print("WRONG: reported as taken by another mover")
except atomicfs.MoveStranded:
    print("stranded", sorted(p.name.endswith(".staged") for p in (root / "j").iterdir()))
flag.unlink()
print("finished", atomicfs.retry_stranded(), (root / "dst" / "b.mp4").read_bytes() == b"b")
print("left", sorted(p.name for p in (root / "j").glob("*.staged")))
"""


def test_a_move_whose_private_name_is_invisible_waits_or_finishes_later(
    tmp_path: Path,
) -> None:
    script = tmp_path / "invisible.py"
    script.write_text(_INVISIBLE)
    work = tmp_path / "w"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(script), str(work)], capture_output=True,
                          text=True, env=clean_env({"PYTHONPATH": os.getcwd()}), timeout=60,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "moved a.mp4 True", proc.stdout
    assert lines[1].startswith("stranded") and "True" in lines[1], proc.stdout
    assert lines[2] == "finished 1 True", proc.stdout
    assert lines[3] == "left []", proc.stdout

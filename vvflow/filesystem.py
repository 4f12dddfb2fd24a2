"""What the filesystem under the storage root is and can do, and which move protocol
vvflow uses on it (see atomicfs): said at start-up and by `vvflow doctor`, and a root
on which no move could be made safe is refused before anything is claimed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vvflow import atomicfs
from vvflow.layout import PROBE_PREFIX

#: Filesystem types whose files other hosts may see and change: no inotify events for
#: their changes, and the caches of each client differ.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "virtiofs", "ceph", "glusterfs",
        "lustre", "gpfs", "beegfs", "afs", "ncpfs", "davfs", "sshfs", "vboxsf", "vmhgfs",
        "prl_fs", "efs", "orangefs", "ocfs2", "gfs2",
    }
)  # fmt: skip

RENAMEAT2 = "renameat2"
RENAME_LINK = "rename+link"


def _unescape_mount(text: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as octal.
    return text.encode().decode("unicode_escape") if "\\" in text else text


def mount_of(path: Path) -> tuple[str, str, list[str]]:
    """(mount point, filesystem type, mount and superblock options) of the filesystem
    `path` is on, from /proc/self/mountinfo; ('', '', []) when unknown."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return "", "", []
    target = os.path.realpath(path)
    best: tuple[str, str, list[str]] = ("", "", [])
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        mount_point = _unescape_mount(fields[4])
        prefix = mount_point.rstrip("/") + "/"
        if (target == mount_point or target.startswith(prefix)) and len(mount_point) >= len(
            best[0]
        ):
            super_fields = right.split()
            options = fields[5].split(",") + (
                super_fields[2].split(",") if len(super_fields) > 2 else []
            )
            best = (mount_point, super_fields[0], options)
    return best


def filesystem_type(path: Path) -> str:
    """The type of the filesystem `path` is on ('' if unknown)."""
    return mount_of(path)[1]


def is_shared_type(fstype: str) -> bool:
    """A network filesystem, or a FUSE one (whose server may be anywhere); `fuseblk`
    (NTFS, exFAT drivers) is a local disk."""
    return fstype in NETWORK_FILESYSTEMS or (fstype.startswith("fuse") and fstype != "fuseblk")


def needs_polling(path: Path) -> bool:
    return is_shared_type(filesystem_type(path))


@dataclass
class Capabilities:
    """What a probe under the root found."""

    fstype: str
    mount_point: str
    shared: bool
    #: True when renameat2 refused to replace a file; None when it replaced it.
    noreplace: bool | None
    noreplace_detail: str
    hardlinks: bool | None
    protocol: str
    #: Why this root cannot be run safely; empty when it can.
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        where = "network or FUSE: other hosts may share it" if self.shared else "local"
        links = {True: "yes", False: "no", None: "unknown"}[self.hardlinks]
        return (
            f"{self.fstype or 'unknown'} ({where}); RENAME_NOREPLACE: {self.noreplace_detail}; "
            f"hard links: {links}; protocol: {self.protocol}"
        )

    def fields(self) -> dict[str, Any]:
        return {
            "fstype": self.fstype,
            "mount_point": self.mount_point,
            "shared": self.shared,
            "rename_noreplace": self.noreplace,
            "hard_links": self.hardlinks,
            "protocol": self.protocol,
        }


def _unsafe_options(fstype: str, options: list[str]) -> list[str]:
    """Mount options under which instances cannot see each other's writes in time."""
    problems = []
    if fstype.startswith("nfs") and "nocto" in options:
        problems.append(
            "mounted with `nocto`: without close-to-open consistency an instance may read "
            "another's heartbeat, reports and index stale and take over its live claims; "
            "remount without `nocto`"
        )
    if fstype in ("cifs", "smb3") and "cache=loose" in options:
        problems.append(
            "mounted with `cache=loose`: clients cache without coherency, so instances may "
            "read each other's heartbeats and reports stale; remount with `cache=strict`"
        )
    return problems


def _try_noreplace(a: Path, b: Path, free: Path) -> tuple[bool | None, str]:
    """Rename `a` to the free name `free`, then over the existing `b`, with
    RENAME_NOREPLACE. Both are needed: Linux itself refuses an existing target before
    the filesystem is asked, so a refusal alone proves nothing."""
    err = atomicfs.renameat2_errno(a, free)
    if err:
        return False, f"no ({errno.errorcode.get(err, str(err))})"
    err = atomicfs.renameat2_errno(free, b)
    if err == 0:
        return None, "IGNORED: it replaced an existing file"
    if err == errno.EEXIST:
        return True, "yes"
    return False, f"no ({errno.errorcode.get(err, str(err))})"


def probe(folder: Path) -> Capabilities:
    """Probe the filesystem of `folder` (a folder of the root vvflow may write in): its
    type, whether it is shared, whether RENAME_NOREPLACE and hard links work, and so
    which protocol moves use and whether it is safe."""
    mount_point, fstype, options = mount_of(folder)
    shared = is_shared_type(fstype)
    problems = _unsafe_options(fstype, options)
    noreplace: bool | None = False
    detail = "unknown (not writable)"
    hardlinks: bool | None = None
    scratch = folder / f"{PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        scratch.mkdir()
        a, b = scratch / "a", scratch / "b"
        a.write_bytes(b"a")
        b.write_bytes(b"b")
        # None: the flag was ignored (the file replaced), so never use renameat2 here.
        noreplace, detail = _try_noreplace(a, b, scratch / "free")
        try:
            os.link(b, scratch / "link")
            hardlinks = True
        except OSError:
            hardlinks = False
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(scratch)
    if noreplace and not atomicfs.FORCE_LINK:
        protocol = RENAMEAT2
    elif hardlinks is False:
        protocol = "none"
        problems.append(
            "neither RENAME_NOREPLACE nor hard links work here, so a video cannot be filed "
            "without risking to overwrite another: vvflow needs one of them"
        )
    else:
        protocol = RENAME_LINK + (" (forced by VVFLOW_RENAME=link)" if atomicfs.FORCE_LINK else "")
    return Capabilities(fstype, mount_point, shared, noreplace, detail, hardlinks, protocol,
                        problems)  # fmt: skip

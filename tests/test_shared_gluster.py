"""Several hosts on a real GlusterFS volume (issue 14): the primitives the claim protocol
relies on, raced by two FUSE clients of one volume.

The volume (tests/gluster.py, the session's `gluster` fixture) is served from a network
namespace of the test's own and mounted twice, so the two mounts are two independent
clients, each with its own caches.
"""

from __future__ import annotations

import pytest

from tests import gluster_races as races
from tests.gluster import GlusterVolume
from tests.test_adversarial_support import entries

RACES = 200


def _race_folder(volume: GlusterVolume, name: str) -> str:
    for sub in ("src", "dir0", "dir1", "dst"):
        (volume.mounts[0] / name / sub).mkdir(parents=True)
    return name


@pytest.mark.timeout(150)
def test_gluster_primitives_across_two_clients(gluster: GlusterVolume) -> None:
    """What a claim protocol may rely on across two clients of one GlusterFS volume,
    each race run 200 times by two processes (one per mount) released at one barrier
    after both looked the names up:

    - plain rename(2) of one file into two folders: exactly one wins, the loser gets
      ENOENT (never both, whatever the caches hold);
    - renameat2(RENAME_NOREPLACE) is refused with EINVAL (so it cannot be the lock);
    - link(2) of two different files to one new name, open(O_CREAT|O_EXCL) and mkdir(2)
      of one name: exactly one wins, the loser gets EEXIST;
    - rename(2) onto a name that exists replaces it (so a plain rename must never
      target a name another client can target).

    Printed, not asserted (they are what the protocol must not rely on): how often the
    link + unlink move "wins" on both sides, how long another client keeps seeing the
    old st_nlink and a replaced name, and how often `mkdir -p` on a fresh tree from both
    clients raises."""
    mounts = gluster.mounts
    got: dict[str, races.Results] = {}
    for key, race in (("rename", races.RENAME), ("link", races.LINK_SAME_DESTINATION),
                      ("excl", races.CREATE_EXCL), ("mkdir", races.MKDIR),
                      ("link_unlink", races.LINK_UNLINK)):  # fmt: skip
        got[key] = races.run_race(race, mounts, _race_folder(gluster, f"prim-{key}"), RACES)
    folder = _race_folder(gluster, "prim-misc")
    noreplace = races.run_race(races.RENAME_NOREPLACE, mounts, folder, 20)
    makedirs = races.run_race(races.MAKEDIRS, mounts, folder, 50)
    nlink = races.nlink_seen_after(mounts, folder, 5)
    replaced, replace_seen = races.rename_over_existing(mounts, folder, 5)
    stale = races.stale_reads_after_replace(mounts, folder, 20)

    def seconds(values: list[float | None]) -> str:
        return ", ".join("never" if v is None else f"{v:.2f}" for v in values)

    lines = [f"{r.name}: {dict(r.pairs)} ({r.seconds:.1f}s)" for r in got.values()]
    lines += [
        f"{noreplace.name}: {dict(noreplace.pairs)}",
        f"{makedirs.name}: {dict(makedirs.pairs)}",
        f"st_nlink == 2 seen by the other client after (s): {seconds(nlink)}",
        f"rename onto an existing name: {dict(replaced)}; the other client reads the new "
        f"bytes after (s): {seconds(replace_seen)}; at once it reads: {dict(stale)}",
    ]
    print("\nGlusterFS primitives across two clients, " + f"{RACES} races each:\n  "
          + "\n  ".join(lines))  # fmt: skip

    exclusive = {"ok", "ENOENT"}
    assert got["rename"].winners() == {1: RACES}, got["rename"].pairs
    assert all(set(pair) == exclusive for pair in got["rename"].pairs), got["rename"].pairs
    assert set(noreplace.pairs) == {("EINVAL", "EINVAL")}, noreplace.pairs
    for key in ("link", "excl", "mkdir"):
        assert got[key].winners() == {1: RACES}, (key, got[key].pairs)
        assert all(set(pair) == {"ok", "EEXIST"} for pair in got[key].pairs), got[key].pairs
    assert len(entries(mounts[0] / "prim-link" / "dst")) == RACES
    assert replaced == {"replaced": 5}, replaced

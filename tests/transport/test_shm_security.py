"""What another local user can do to the store's files: nothing (issue 18).

Squatting a name needs write access to the directory holding it; every
directory the store writes in is its own, 0700, made by an exclusive ``mkdir``
under an unguessable name. ``tests/other_user.py`` runs the attacker as a real
second user (uid 65534) where the tests run as root, as in CI.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

import pytest

from localsched.transport import segment_files, shm
from localsched.transport.segment_files import sweep_stale_segments
from localsched.transport.shm import BlobStore, SharedMemoryWarning, load
from tests.other_user import OTHER_UID, as_other_user, give_away, squat

np = pytest.importorskip("numpy")

DEAD_PID = 2**31 - 1  # above any pid_max, so never a live process
MiB = 1 << 20


def _mode(path: str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_each_store_has_its_own_private_directory_with_an_unguessable_name():
    with BlobStore() as first, BlobStore() as second:
        for store in (first, second):
            assert os.path.dirname(store.directory) == shm.SHM_DIR
            assert stat.S_ISDIR(os.lstat(store.directory).st_mode)
            assert _mode(store.directory) == 0o700
            ref = store.put(bytearray(100_000))
            assert os.path.dirname(ref.segment) == store.directory
            assert _mode(ref.segment) == 0o600
        assert first.directory != second.directory
        # 128 random bits after the pid: nothing to guess from a pid or a time.
        token = os.path.basename(first.directory).rsplit("-", 1)[1]
        assert len(token) == 32
    assert not os.path.lexists(first.directory)


def test_a_taken_directory_name_is_never_used_but_retried(monkeypatch, tmp_path):
    taken = tmp_path / "localsched-1-taken"
    taken.mkdir()
    give_away(taken)
    names = iter([taken.name, "localsched-1-free"])
    monkeypatch.setattr(segment_files, "private_directory_name", lambda: next(names))
    directory = segment_files.make_private_directory(str(tmp_path))
    assert directory == str(tmp_path / "localsched-1-free")
    assert os.lstat(taken).st_uid == OTHER_UID  # untouched


def _try_inside(directory: str) -> object:
    return squat(os.path.join(directory, name) for name in ("x", "x.link", ".spill"))


def test_another_user_can_create_nothing_in_the_stores_directories():
    # In /dev/shm and /tmp themselves, which every user can reach and write.
    with BlobStore() as store:
        store.put(np.ones(MiB // 8))
        assert store.spill(1) >= MiB
        for directory in (store.directory, store.spill_directory):
            assert os.path.dirname(directory) in (shm.SHM_DIR, tempfile.gettempdir())
            outcome = as_other_user(_try_inside, directory)
            assert outcome == {"made": [], "refused": ["EACCES"] * 3}


def _squat_spill_names(segments: list[str]) -> object:
    # Every name the old spill derived from a segment's name.
    return squat([f"{s}.link" for s in segments] + [s + ".tmp" for s in segments])


def test_another_user_cannot_block_spilling(tmp_path):
    with BlobStore(spill_directory=str(tmp_path)) as store:
        values = [np.full(MiB // 8, float(i)) for i in range(3)]
        refs = [store.put(v) for v in values]
        outcome = as_other_user(_squat_spill_names, [r.segment for r in refs])
        assert outcome["made"] == []
        assert store.spill(3 * MiB) >= 3 * MiB
        assert store.spill_count == 3
        for ref, value in zip(refs, values, strict=True):
            assert os.path.islink(ref.segment)
            np.testing.assert_array_equal(load(ref), value)


def test_a_failed_link_leaves_no_copy_and_the_next_spill_works(tmp_path, monkeypatch):
    with BlobStore(spill_directory=str(tmp_path)) as store:
        value = np.arange(MiB // 8, dtype=np.float64)
        ref = store.put(value)
        real_rename = os.rename

        def refuse(source: str, destination: str) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted", source)

        monkeypatch.setattr(os, "rename", refuse)
        with pytest.raises(PermissionError):
            store.spill(1)
        monkeypatch.setattr(os, "rename", real_rename)
        assert os.listdir(store.spill_directory) == []  # no copy left behind
        assert sorted(os.listdir(store.directory)) == sorted(
            [".fallback", ".spill", os.path.basename(ref.segment)]
        )
        assert store.spill(1) >= MiB
        assert os.path.islink(ref.segment)
        np.testing.assert_array_equal(load(ref), value)


def test_a_leftover_copy_of_ours_does_not_block_the_next_spill(tmp_path):
    with BlobStore(spill_directory=str(tmp_path)) as store:
        value = np.arange(MiB // 8, dtype=np.float64)
        ref = store.put(value)
        spill_directory = segment_files.attach_directory(
            store.directory, segment_files.SPILL_LINK, str(tmp_path)
        )
        store._spill_directory = spill_directory
        leftover = os.path.join(spill_directory, os.path.basename(ref.segment))
        with open(leftover, "wb") as f:
            f.write(b"stale")
        assert store.spill(1) >= MiB
        np.testing.assert_array_equal(load(ref), value)
    assert not os.path.exists(leftover)


def test_hostile_old_fallback_directory_is_neither_used_nor_scanned(
    monkeypatch, tmp_path
):
    """The old fixed fallback ``$TMPDIR/localsched-shm-<uid>``, made first by
    another user and filled with names of our prefix and pid."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(segment_files, "SHM_DIR", str(tmp_path / "no-shm"))
    monkeypatch.setattr(segment_files, "_fallback_warned", False)
    hostile = tmp_path / f"localsched-shm-{os.getuid()}"
    hostile.mkdir(mode=0o777)
    token = "feed"
    planted = [
        hostile / f"localsched-{os.getpid()}-{token}-{name}"
        for name in ("0", f"{os.getpid()}.0", "1")
    ]
    for path in planted:
        path.write_bytes(b"planted")
    give_away(hostile, *planted)
    with pytest.warns(SharedMemoryWarning):
        store = BlobStore(token=token)
    with store:
        assert os.path.dirname(store.directory) == str(tmp_path)
        assert store.directory != str(hostile)
        ref = store.put(bytearray(100_000))
        assert os.path.dirname(ref.segment) == store.directory
        store.reclaim(os.getpid())
        store.release(ref)
    assert all(p.read_bytes() == b"planted" for p in planted)
    assert sorted(os.listdir(tmp_path)) == [hostile.name]


def test_start_up_sweep_removes_dead_clusters_and_keeps_what_others_own(tmp_path):
    # A dead cluster of ours: its directory, a spilled segment and the copy.
    spill_base = tmp_path / "spill-base"
    spill_base.mkdir()
    dead = segment_files.make_private_directory(str(tmp_path))
    dead_dir = str(tmp_path / f"localsched-{DEAD_PID}-{'0' * 32}")
    os.rename(dead, dead_dir)
    spill_dir = segment_files.attach_directory(
        dead_dir, segment_files.SPILL_LINK, str(spill_base)
    )
    copy = os.path.join(spill_dir, "localsched-x-0")
    open(copy, "wb").close()
    os.symlink(copy, os.path.join(dead_dir, "localsched-x-0"))
    # Another user's things under the names the sweep looks at.
    theirs = tmp_path / f"localsched-{DEAD_PID}-{'1' * 32}"
    theirs.mkdir()
    (theirs / "file").write_bytes(b"theirs")
    victim = tmp_path / "our-precious-file"
    victim.write_bytes(b"ours")
    planted_link = tmp_path / f"localsched-{DEAD_PID}-link"
    planted_link.symlink_to(victim)
    planted_dir_link = tmp_path / f"localsched-{DEAD_PID}-{'2' * 32}"
    planted_dir_link.symlink_to(spill_base)
    give_away(theirs, theirs / "file", planted_link, planted_dir_link)

    not_ours = tmp_path / f"localsched-{DEAD_PID}-notes"  # a name we never make
    not_ours.mkdir()
    (not_ours / "file").write_bytes(b"kept")

    removed = sweep_stale_segments([str(tmp_path)])

    assert {dead_dir, spill_dir, copy} <= set(removed)
    assert not os.path.lexists(dead_dir)
    assert not os.path.lexists(spill_dir)
    assert (theirs / "file").read_bytes() == b"theirs"
    assert victim.read_bytes() == b"ours"
    assert os.path.islink(planted_link)
    assert os.path.islink(planted_dir_link)
    assert os.listdir(spill_base) == []
    assert (not_ours / "file").read_bytes() == b"kept"


def test_removal_of_a_directory_owned_by_someone_else_touches_nothing(tmp_path):
    theirs = tmp_path / "localsched-1-theirs"
    theirs.mkdir()
    (theirs / "segment").write_bytes(b"x")
    give_away(theirs)
    assert segment_files.remove_cluster_directory(str(theirs)) == []
    assert (theirs / "segment").exists()


def test_file_errors_never_escape_reclaim_release_or_close(monkeypatch, caplog):
    store = BlobStore(max_free_bytes=0)
    ref = store.put(bytearray(100_000))
    orphan = store.writer().write(bytearray(100_000))  # named with our pid

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted", path)

    monkeypatch.setattr(os, "unlink", refuse)
    monkeypatch.setattr(os, "rmdir", refuse)
    store.reclaim(os.getpid())
    store.release(ref)
    store.close()
    assert "Could not remove" in caplog.text
    monkeypatch.undo()
    assert os.path.exists(orphan.segment)
    segment_files.remove_cluster_directory(store.directory)
    assert not os.path.lexists(store.directory)


def test_a_pooled_segment_that_cannot_be_opened_is_dropped_not_raised(monkeypatch):
    with BlobStore() as store:
        store.release(store.put(bytearray(100_000)))
        assert store.free_bytes

        def refuse(path: str) -> int:
            raise PermissionError(errno.EACCES, "Permission denied", path)

        monkeypatch.setattr(shm, "_lock_exclusive", refuse)
        assert store.lease(100_000, holder=1) is None
        assert store.free_bytes == 0
        monkeypatch.undo()
        assert load(store.put(bytearray(100_000))) == bytearray(100_000)


def test_a_dropped_value_in_a_leased_segment_stays_leased():
    with BlobStore() as store:
        store.release(store.put(bytearray(100_000)))
        writer = store.writer()
        lease = store.lease(100_000, holder=os.getpid())
        writer.grant(lease)
        ref = writer.write(bytearray(100_000))
        assert ref.segment == lease.segment
        writer.discard(ref)  # its task was forgotten: the store never adopts it
        assert os.path.exists(lease.segment)
        assert store.memory_bytes == os.stat(lease.segment).st_size
        again = writer.write(bytearray(100_000))
        assert again.segment == lease.segment  # reused, as a lease should be
        own = store.writer().write(bytearray(100_000))
        writer.discard(own)  # one the writer made: unlinked
        assert not os.path.exists(own.segment)
        store.adopt(again)
        assert store.memory_bytes == os.stat(again.segment).st_size

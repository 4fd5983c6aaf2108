"""Filesystem operations compose inside one transaction (pyfs/fs/txn.py, FileSystem.transaction).

Promises proven here: several operation functions run in one `Txn` see each
other's effects (read-your-writes), commit as exactly one journal entry, and
leave nothing behind when any of them fails; what they leave for after the
commit (inodes without names, long operations begun) is acted on once the
transaction has committed; a power cut gives all of the transaction or none.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

from pyfs.engine.fault_device import FaultDevice
from pyfs.fs import FileSystem, FsError, Txn
from pyfs.fs import create, lookup, remove, rename, setattr as setting, write, xattrs
from pyfs.fs import logged_ops, longops
from pyfs.format.keys import encode_key
from pyfs.format.records import ROOT_INO, Tree
from test_fs_core import contents, errno_of, fresh_image, new_file, names


@pytest.fixture
def fs():
    fs = FileSystem.mount(FaultDevice(fresh_image()))
    yield fs


def counting_commits(fs: FileSystem) -> list:
    commits: list = []
    original = fs.engine._commit
    fs.engine._commit = lambda updates: commits.append(updates) or original(updates)
    return commits


def test_a_create_and_a_rename_over_another_file_commit_as_one_journal_entry(fs):
    old = new_file(fs, ROOT_INO, b"app.conf", b"old contents")
    commits = counting_commits(fs)
    with fs.transaction() as x:
        ino, _ = create.create(x, ROOT_INO, b"app.conf.new", 0o644)
        write.write(x, ino, 0, b"new contents")
        rename.rename(x, ROOT_INO, b"app.conf.new", ROOT_INO, b"app.conf")
    # One entry for the three operations; the deletion of the replaced file follows on its own.
    assert len(commits) == 2
    first_trees = {tree for tree, _, _ in commits[0]}
    assert {Tree.INODES, Tree.DIRENTS, Tree.MISC} <= first_trees
    assert (Tree.INODES, encode_key((old,)), None) in commits[1]
    assert sorted(names(fs, ROOT_INO)) == [b".", b"..", b"app.conf"]
    attr = fs.lookup(ROOT_INO, b"app.conf")
    assert attr.ino == ino and contents(fs, ino) == b"new contents"
    # The replaced file lost its last name and nothing used it: deleted after the commit.
    with fs.engine.transaction() as t:
        assert t.get(Tree.INODES, (old,)) is None


def test_an_operation_sees_what_the_operations_before_it_in_the_transaction_did(fs):
    with fs.transaction() as x:
        d, _ = create.mkdir(x, ROOT_INO, b"var", 0o755)
        sub, _ = create.mkdir(x, d, b"new", 0o700)
        f, _ = create.create(x, sub, b"file", 0o600)
        write.write(x, f, 0, b"abc")
        xattrs.setxattr(x, f, b"user.k", b"v")
        found, inode = lookup.lookup(x, sub, b"file")
        assert found == f and inode.size == 3
        setting.setattr(x, f, size=1)
        assert lookup.lookup(x, sub, b"file")[1].size == 1
        assert lookup.lookup(x, d, b"..")[0] == ROOT_INO
        # Nothing of it is visible outside the transaction before the commit.
        assert errno_of(fs.lookup, ROOT_INO, b"var") == errno.ENOENT
    assert fs.lookup(ROOT_INO, b"var").ino == d
    assert contents(fs, f) == b"a"
    assert fs.getxattr(f, b"user.k") == b"v"


def test_a_failing_operation_leaves_no_trace_of_the_ones_before_it(fs):
    keep = new_file(fs, ROOT_INO, b"keep", b"data")
    before = fs.getattr(ROOT_INO)
    commits = counting_commits(fs)
    with fs.engine.transaction() as t:
        counter = t.get(Tree.MISC, ("next_ino",))
    with pytest.raises(FsError) as failed:
        with fs.transaction() as x:
            create.mkdir(x, ROOT_INO, b"made", 0o755)
            remove.unlink(x, ROOT_INO, b"keep")
            rename.rename(x, ROOT_INO, b"missing", ROOT_INO, b"other")
    assert failed.value.errno == errno.ENOENT
    assert commits == []
    assert sorted(names(fs, ROOT_INO)) == [b".", b"..", b"keep"]
    assert contents(fs, keep) == b"data"
    assert fs.getattr(ROOT_INO) == before  # not even a time changed
    with fs.engine.transaction() as t:
        assert t.get(Tree.MISC, ("next_ino",)) == counter


def test_a_file_unlinked_while_open_inside_a_transaction_lives_until_released(fs):
    ino = new_file(fs, ROOT_INO, b"f", b"x" * 100)
    fh = fs.open(ino, os.O_RDONLY)
    with fs.transaction() as x:
        remove.unlink(x, ROOT_INO, b"f")
        create.create(x, ROOT_INO, b"f", 0o644)
        assert x.unlinked == [ino]
    assert fs.read(fh, 0, 200) == b"x" * 100
    fs.release(fh)
    with fs.engine.transaction() as t:
        assert t.get(Tree.INODES, (ino,)) is None


def test_a_long_truncate_begun_in_a_transaction_runs_after_its_commit(fs, monkeypatch):
    monkeypatch.setattr(logged_ops, "STEP_EXTENTS", 4)
    ino = new_file(fs, ROOT_INO, b"big")
    fh = fs.open(ino, os.O_RDWR)
    for i in range(20):
        fs.write(fh, i * 8192, b"z" * 100)
    fs.release(fh)
    with fs.transaction() as x:
        setting.setattr(x, ino, size=10)
        assert x.started == [(logged_ops.OP_TRUNCATE, ino)]
        create.mkdir(x, ROOT_INO, b"beside", 0o755)
        # The file's extents change only with the steps after the commit: hands off until then.
        with pytest.raises(FsError) as busy:
            write.write(x, ino, 0, b"more")
        assert busy.value.errno == errno.EBUSY
    assert longops.pending(fs.engine) == []
    assert fs.getattr(ino).size == 10 and contents(fs, ino) == b"z" * 10
    assert fs.lookup(ROOT_INO, b"beside").ino


def test_a_power_cut_gives_a_composed_transaction_whole_or_not_at_all(fs):
    new_file(fs, ROOT_INO, b"target", b"old")
    fs.flush()
    device: FaultDevice = fs.engine.device
    start = len(device.ops)
    with fs.transaction() as x:
        for i in range(30):
            ino, _ = create.create(x, ROOT_INO, b"f%02d" % i, 0o644)
            write.write(x, ino, 0, b"data %d" % i * 500)
        rename.rename(x, ROOT_INO, b"f00", ROOT_INO, b"target")
    fs.flush()
    end = len(device.ops)
    rng = random.Random(7)
    outcomes = set()
    for point in range(start, end + 1):
        for mode in ("drop_all", "keep_all", "keep_some", "tear_last"):
            image = device.crash_image(point, mode, rng)
            after = FileSystem.mount(FaultDevice(image))
            listed = sorted(names(after, ROOT_INO))
            if listed == [b".", b"..", b"target"]:
                assert contents(after, after.lookup(ROOT_INO, b"target").ino) == b"old"
                outcomes.add("none")
            else:
                assert listed == sorted([b".", b"..", b"target"] + [b"f%02d" % i for i in range(1, 30)])
                assert contents(after, after.lookup(ROOT_INO, b"target").ino) == b"data 0" * 500
                outcomes.add("all")
            after.close()
    assert outcomes == {"none", "all"}


def test_a_transaction_on_a_read_only_filesystem_is_refused_with_erofs(fs):
    image = fs.engine.device.durable_image()
    fs.close()
    from pyfs.engine.engine import EngineOptions

    ro = FileSystem.mount(FaultDevice(bytearray(image)), EngineOptions(read_only=True))
    with pytest.raises(FsError) as refused:
        with ro.transaction() as x:
            assert isinstance(x, Txn)
    assert refused.value.errno == errno.EROFS

"""The filesystem core (pyfs/fs/*), one behaviour per test.

Promises proven here (the module docstrings of pyfs/fs/filesystem.py,
data.py, rename.py, xattrs.py, longops.py, names.py): each POSIX call
behaves as on ext4, errno included; names over 255 bytes get ENAMETOOLONG
from every call that takes one; readdir cookies stay valid while the
directory changes; timestamps follow the POSIX ctime/mtime rules with
nanosecond values; inode numbers are never reused; a file without names
lives while it is open or known, and is deleted (its space freed) after
release and forget, or at the next mount after a crash; long truncates and
deletes run as logged steps that mount finishes after a power cut
(DESIGN.md invariant 7); a full image gives ENOSPC and works again after
deletes.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio

from pyfs.engine.check import check_engine
from pyfs.engine.fault_device import FaultDevice, PowerCut
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.records import Extent, Tree
from pyfs.fs import NOW, Ctx, FileSystem, FsError, format_filesystem
from pyfs.fs import longops
from pyfs.fs.extents import inline_max
from pyfs.fs.xattrs import XATTR_CREATE, XATTR_REPLACE
from tools.crashsim import small_geometry

ROOT = 1
NOREPLACE, EXCHANGE = 1, 2
USER = Ctx(uid=1000, gid=1000)
LONG_NAME = b"n" * 256
_IMAGES: dict[int, bytes] = {}


def fresh_image(size: int = 8 << 20) -> bytearray:
    if size not in _IMAGES:
        dev = FaultDevice(bytearray(size))
        engine = Engine.format(dev, small_geometry(11, size))
        format_filesystem(engine)
        engine.close()
        _IMAGES[size] = bytes(dev.durable_image())
    return bytearray(_IMAGES[size])


@pytest.fixture
def fs():
    fs = FileSystem.mount(FaultDevice(fresh_image()))
    yield fs
    if not fs.engine.closed and fs.engine.failed is None:
        assert check_engine(fs.engine) == []


def remount(fs: FileSystem, options: EngineOptions | None = None) -> FileSystem:
    """Clean unmount and mount again."""
    fs.close()
    return FileSystem.mount(FaultDevice(fs.engine.device.durable_image()), options)


def crash(fs: FileSystem) -> FileSystem:
    """Power fails: mount what the disk holds, without a close."""
    return FileSystem.mount(FaultDevice(fs.engine.device.durable_image()))


def errno_of(fn, *args, **kwargs) -> int | None:
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno
    return None


def new_file(fs: FileSystem, parent: int, name: bytes, data: bytes = b"", mode: int = 0o644, ctx: Ctx = Ctx()) -> int:
    """A file with `data`, closed and forgotten, as after `echo data > name`."""
    fh, attr = fs.create(parent, name, mode, os.O_RDWR, ctx)
    if data:
        fs.write(fh, 0, data)
    fs.release(fh)
    fs.forget(attr.ino)
    return attr.ino


def new_dir(fs: FileSystem, parent: int, name: bytes, mode: int = 0o755, ctx: Ctx = Ctx()) -> int:
    attr = fs.mkdir(parent, name, mode, ctx)
    fs.forget(attr.ino)
    return attr.ino


def contents(fs: FileSystem, ino: int) -> bytes:
    fh = fs.open(ino, os.O_RDONLY)
    try:
        return fs.read(fh, 0, fs.getattr(ino).size + 1)
    finally:
        fs.release(fh)


def names(fs: FileSystem, ino: int) -> list[bytes]:
    return [name for name, _, _ in fs.readdir(ino)]


def extents_of(fs: FileSystem, ino: int) -> list[tuple[int, Extent]]:
    with fs.engine.transaction() as t:
        return [(off, Extent.decode(raw)) for (_, off), raw in t.scan(Tree.EXTENTS, (ino, 0), (ino + 1, 0))]


# -- lookup and getattr -------------------------------------------------------------


def test_lookup_finds_an_entry_and_counts_a_kernel_reference(fs):
    ino = new_file(fs, ROOT, b"f", b"x")
    attr = fs.lookup(ROOT, b"f")
    assert (attr.ino, attr.size, stat.S_ISREG(attr.mode)) == (ino, 1, True)
    assert fs.lookups[ino] == 1


def test_lookup_of_a_missing_name_fails_with_enoent(fs):
    assert errno_of(fs.lookup, ROOT, b"nothing") == errno.ENOENT


def test_lookup_inside_a_file_fails_with_enotdir(fs):
    ino = new_file(fs, ROOT, b"f")
    assert errno_of(fs.lookup, ino, b"x") == errno.ENOTDIR


def test_lookup_of_dot_and_dotdot_gives_the_directory_and_its_parent(fs):
    d = new_dir(fs, ROOT, b"d")
    assert fs.lookup(d, b".").ino == d
    assert fs.lookup(d, b"..").ino == ROOT
    assert fs.lookup(ROOT, b"..").ino == ROOT


def test_getattr_of_an_unknown_inode_fails_with_enoent(fs):
    assert errno_of(fs.getattr, 999) == errno.ENOENT


CALLS_WITH_A_NAME = {
    "lookup": lambda fs, f, n: fs.lookup(ROOT, n),
    "create": lambda fs, f, n: fs.create(ROOT, n, 0o644),
    "mknod": lambda fs, f, n: fs.mknod(ROOT, n, stat.S_IFIFO | 0o644),
    "mkdir": lambda fs, f, n: fs.mkdir(ROOT, n, 0o755),
    "symlink": lambda fs, f, n: fs.symlink(ROOT, n, b"target"),
    "link": lambda fs, f, n: fs.link(f, ROOT, n),
    "unlink": lambda fs, f, n: fs.unlink(ROOT, n),
    "rmdir": lambda fs, f, n: fs.rmdir(ROOT, n),
    "rename from": lambda fs, f, n: fs.rename(ROOT, n, ROOT, b"g"),
    "rename to": lambda fs, f, n: fs.rename(ROOT, b"f", ROOT, n),
}


@pytest.mark.parametrize("call", sorted(CALLS_WITH_A_NAME))
def test_every_call_taking_a_name_rejects_one_over_255_bytes_with_enametoolong(fs, call):
    f = new_file(fs, ROOT, b"f")
    assert errno_of(CALLS_WITH_A_NAME[call], fs, f, LONG_NAME) == errno.ENAMETOOLONG


def test_a_name_of_exactly_255_bytes_works_everywhere(fs):
    name = b"m" * 255
    ino = new_file(fs, ROOT, name)
    assert fs.lookup(ROOT, name).ino == ino
    fs.rename(ROOT, name, ROOT, b"x" * 255)
    assert names(fs, ROOT) == [b".", b"..", b"x" * 255]


# -- setattr and access ---------------------------------------------------------------


def test_chmod_changes_the_permission_bits_and_keeps_the_file_type(fs):
    ino = new_file(fs, ROOT, b"f")
    attr = fs.setattr(ino, mode=0o4751)
    assert attr.mode == stat.S_IFREG | 0o4751
    assert fs.getattr(ino).mode == stat.S_IFREG | 0o4751


def test_chown_changes_the_owner_and_the_group(fs):
    ino = new_file(fs, ROOT, b"f")
    fs.setattr(ino, uid=1000)
    fs.setattr(ino, gid=50)
    attr = fs.getattr(ino)
    assert (attr.uid, attr.gid) == (1000, 50)


def test_chown_clears_setuid_and_the_setgid_of_a_group_executable_file(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o6755)
    assert stat.S_IMODE(fs.setattr(ino, uid=1000, gid=1000).mode) == 0o755


def test_chown_to_the_same_owner_still_clears_setuid(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o4755)
    assert stat.S_IMODE(fs.setattr(ino, uid=0, gid=0).mode) == 0o755


def test_chown_keeps_the_setgid_of_a_file_that_is_not_group_executable(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o6745)
    assert stat.S_IMODE(fs.setattr(ino, gid=1000).mode) == 0o2745


def test_chown_of_a_directory_keeps_its_setgid(fs):
    d = new_dir(fs, ROOT, b"d", 0o2775)
    assert stat.S_IMODE(fs.setattr(d, gid=1000).mode) == 0o2775


def test_truncate_down_drops_the_data_after_the_new_size(fs):
    data = os.urandom(300_000)
    ino = new_file(fs, ROOT, b"f", data)
    assert fs.setattr(ino, size=100_001).size == 100_001
    assert contents(fs, ino) == data[:100_001]


def test_truncate_up_reads_zeros_after_the_old_end(fs):
    ino = new_file(fs, ROOT, b"f", b"abc")
    fs.setattr(ino, size=5000)
    assert contents(fs, ino) == b"abc" + bytes(4997)


def test_truncate_down_then_up_does_not_bring_old_data_back(fs):
    for data in (b"inline data", os.urandom(200_000)):
        ino = new_file(fs, ROOT, b"f%d" % len(data), data)
        fs.setattr(ino, size=3)
        fs.setattr(ino, size=len(data))
        assert contents(fs, ino) == data[:3] + bytes(len(data) - 3)


def test_truncate_of_a_directory_fails_with_eisdir_and_of_a_symlink_with_einval(fs):
    d = new_dir(fs, ROOT, b"d")
    link = fs.symlink(ROOT, b"l", b"d").ino
    assert errno_of(fs.setattr, d, size=0) == errno.EISDIR
    assert errno_of(fs.setattr, link, size=0) == errno.EINVAL


def test_setattr_with_now_sets_atime_and_mtime_to_the_current_time(fs, clock):
    ino = new_file(fs, ROOT, b"f")
    before = clock[0]
    attr = fs.setattr(ino, atime_ns=NOW, mtime_ns=NOW)
    assert attr.atime_ns > before and attr.mtime_ns > before
    assert attr.ctime_ns > before


def test_setattr_stores_explicit_nanosecond_timestamps_across_a_remount(fs):
    ino = new_file(fs, ROOT, b"f")
    fs.setattr(ino, atime_ns=1_234_567_891_234_567_891, mtime_ns=987_654_321_987_654_321)
    fs = remount(fs)
    attr = fs.getattr(ino)
    assert (attr.atime_ns, attr.mtime_ns) == (1_234_567_891_234_567_891, 987_654_321_987_654_321)


def test_access_follows_the_owner_group_and_other_bits(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o640, ctx=USER)
    fs.access(ino, os.R_OK | os.W_OK, USER)
    fs.access(ino, os.R_OK, Ctx(uid=2000, gid=1000))
    assert errno_of(fs.access, ino, os.W_OK, Ctx(uid=2000, gid=1000)) == errno.EACCES
    assert errno_of(fs.access, ino, os.R_OK, Ctx(uid=2000, gid=2000)) == errno.EACCES
    assert errno_of(fs.access, ino, os.X_OK, USER) == errno.EACCES
    fs.access(ino, os.F_OK, Ctx(uid=2000, gid=2000))


def test_access_lets_root_read_and_write_anything_but_execute_only_with_an_x_bit(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o000, ctx=USER)
    fs.access(ino, os.R_OK | os.W_OK)
    assert errno_of(fs.access, ino, os.X_OK) == errno.EACCES
    fs.setattr(ino, mode=0o001)
    fs.access(ino, os.X_OK)


# -- creating ------------------------------------------------------------------------


def test_create_makes_an_open_regular_file_owned_by_the_caller(fs):
    fh, attr = fs.create(ROOT, b"f", 0o640, os.O_RDWR, USER)
    assert attr.mode == stat.S_IFREG | 0o640
    assert (attr.uid, attr.gid, attr.nlink, attr.size) == (1000, 1000, 1, 0)
    assert fs.write(fh, 0, b"hi") == 2
    fs.release(fh)


@pytest.mark.parametrize("kind, rdev", [(stat.S_IFIFO, 0), (stat.S_IFCHR, os.makedev(1, 3)),
                                        (stat.S_IFBLK, os.makedev(8, 1)), (stat.S_IFSOCK, 0), (stat.S_IFREG, 0)])
def test_mknod_makes_every_kind_of_node(fs, kind, rdev):
    attr = fs.mknod(ROOT, b"node", kind | 0o600, rdev)
    got = fs.getattr(attr.ino)
    assert (stat.S_IFMT(got.mode), stat.S_IMODE(got.mode), got.rdev) == (kind, 0o600, rdev)
    assert fs.lookup(ROOT, b"node").ino == attr.ino


def test_mknod_of_a_fifo_keeps_no_device_number(fs):
    assert fs.mknod(ROOT, b"p", stat.S_IFIFO | 0o600, os.makedev(1, 3)).rdev == 0


def test_mknod_of_a_directory_fails_with_eperm(fs):
    assert errno_of(fs.mknod, ROOT, b"d", stat.S_IFDIR | 0o755) == errno.EPERM


def test_create_over_an_existing_name_fails_with_eexist(fs):
    new_file(fs, ROOT, b"f")
    new_dir(fs, ROOT, b"d")
    assert errno_of(fs.create, ROOT, b"f", 0o644) == errno.EEXIST
    assert errno_of(fs.mkdir, ROOT, b"d", 0o755) == errno.EEXIST
    assert errno_of(fs.mknod, ROOT, b"d", stat.S_IFIFO | 0o644) == errno.EEXIST
    assert errno_of(fs.symlink, ROOT, b"f", b"x") == errno.EEXIST
    assert errno_of(fs.mkdir, ROOT, b".", 0o755) == errno.EEXIST


def test_mkdir_makes_a_directory_with_two_links_and_adds_one_to_its_parent(fs):
    before = fs.getattr(ROOT).nlink
    attr = fs.mkdir(ROOT, b"d", 0o750)
    assert (attr.mode, attr.nlink) == (stat.S_IFDIR | 0o750, 2)
    assert fs.getattr(ROOT).nlink == before + 1


def test_directory_link_count_is_two_plus_its_subdirectories(fs):
    d = new_dir(fs, ROOT, b"d")
    for i in range(3):
        new_dir(fs, d, b"sub%d" % i)
    new_file(fs, d, b"file")
    fs.mknod(d, b"fifo", stat.S_IFIFO | 0o644)
    assert fs.getattr(d).nlink == 5
    fs.rmdir(d, b"sub0")
    fs.rename(d, b"sub1", ROOT, b"moved")
    assert fs.getattr(d).nlink == 3


@pytest.mark.parametrize("length", [1, 600, 3000, 4095])
def test_symlink_keeps_its_target_for_readlink(fs, length):
    target = (b"0123456789/" * 400)[:length]
    attr = fs.symlink(ROOT, b"l", target)
    assert (attr.mode, attr.size) == (stat.S_IFLNK | 0o777, length)
    assert fs.readlink(attr.ino) == target
    fs = remount(fs)
    assert fs.readlink(attr.ino) == target


def test_symlink_with_a_target_over_4095_bytes_fails_with_enametoolong(fs):
    assert errno_of(fs.symlink, ROOT, b"l", b"x" * 4096) == errno.ENAMETOOLONG


def test_readlink_of_a_regular_file_fails_with_einval(fs):
    assert errno_of(fs.readlink, new_file(fs, ROOT, b"f")) == errno.EINVAL


def test_link_adds_a_name_and_one_to_the_link_count(fs, clock):
    ino = new_file(fs, ROOT, b"f", b"data")
    d = new_dir(fs, ROOT, b"d")
    before = fs.getattr(ino).ctime_ns
    attr = fs.link(ino, d, b"g")
    assert attr.nlink == 2 and attr.ctime_ns > before
    assert fs.lookup(d, b"g").ino == ino
    assert contents(fs, ino) == b"data"


def test_link_of_a_directory_fails_with_eperm(fs):
    d = new_dir(fs, ROOT, b"d")
    assert errno_of(fs.link, d, ROOT, b"e") == errno.EPERM


def test_link_to_an_existing_name_fails_with_eexist_even_for_a_directory(fs):
    f = new_file(fs, ROOT, b"f")
    d = new_dir(fs, ROOT, b"d")
    assert errno_of(fs.link, f, ROOT, b"d") == errno.EEXIST
    assert errno_of(fs.link, d, ROOT, b"f") == errno.EEXIST  # Linux looks the name up first


def test_create_in_a_removed_directory_fails_with_enoent(fs):
    d = fs.mkdir(ROOT, b"d", 0o755).ino  # still known to the kernel
    fs.rmdir(ROOT, b"d")
    assert errno_of(fs.create, d, b"f", 0o644) == errno.ENOENT
    assert errno_of(fs.mkdir, d, b"e", 0o755) == errno.ENOENT
    assert fs.getattr(d).nlink == 0
    fs.forget(d)
    assert errno_of(fs.getattr, d) == errno.ENOENT


# -- removing ------------------------------------------------------------------------


def test_unlink_removes_a_name_and_one_link(fs):
    ino = new_file(fs, ROOT, b"f")
    fs.link(ino, ROOT, b"g")
    fs.forget(ino)
    fs.unlink(ROOT, b"f")
    assert errno_of(fs.lookup, ROOT, b"f") == errno.ENOENT
    assert fs.getattr(ino).nlink == 1


def test_unlink_of_a_directory_fails_with_eisdir(fs):
    new_dir(fs, ROOT, b"d")
    assert errno_of(fs.unlink, ROOT, b"d") == errno.EISDIR


def test_unlink_of_a_missing_name_fails_with_enoent(fs):
    assert errno_of(fs.unlink, ROOT, b"nothing") == errno.ENOENT


def test_rmdir_removes_an_empty_directory_and_one_parent_link(fs):
    before = fs.getattr(ROOT).nlink
    new_dir(fs, ROOT, b"d")
    fs.rmdir(ROOT, b"d")
    assert errno_of(fs.lookup, ROOT, b"d") == errno.ENOENT
    assert fs.getattr(ROOT).nlink == before


def test_rmdir_of_a_non_empty_directory_fails_with_enotempty(fs):
    d = new_dir(fs, ROOT, b"d")
    new_file(fs, d, b"f")
    assert errno_of(fs.rmdir, ROOT, b"d") == errno.ENOTEMPTY


def test_rmdir_of_a_file_fails_with_enotdir_and_of_a_missing_name_with_enoent(fs):
    new_file(fs, ROOT, b"f")
    assert errno_of(fs.rmdir, ROOT, b"f") == errno.ENOTDIR
    assert errno_of(fs.rmdir, ROOT, b"nothing") == errno.ENOENT


# -- rename --------------------------------------------------------------------------


def test_rename_moves_an_entry_to_a_new_name_in_another_directory(fs):
    ino = new_file(fs, ROOT, b"f", b"data")
    d = new_dir(fs, ROOT, b"d")
    fs.rename(ROOT, b"f", d, b"g")
    assert errno_of(fs.lookup, ROOT, b"f") == errno.ENOENT
    assert fs.lookup(d, b"g").ino == ino
    assert contents(fs, ino) == b"data"


def test_rename_over_a_file_replaces_it_and_frees_it(fs):
    a = new_file(fs, ROOT, b"a", b"new")
    b = new_file(fs, ROOT, b"b", os.urandom(100_000))
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert fs.lookup(ROOT, b"b").ino == a
    assert names(fs, ROOT) == [b".", b"..", b"b"]
    assert errno_of(fs.getattr, b) == errno.ENOENT
    assert extents_of(fs, b) == []


def test_rename_over_an_empty_directory_replaces_it(fs):
    before = fs.getattr(ROOT).nlink
    src = new_dir(fs, ROOT, b"src")
    dst = new_dir(fs, ROOT, b"dst")
    fs.rename(ROOT, b"src", ROOT, b"dst")
    assert fs.lookup(ROOT, b"dst").ino == src
    assert errno_of(fs.getattr, dst) == errno.ENOENT
    assert fs.getattr(ROOT).nlink == before + 1


def test_rename_over_a_non_empty_directory_fails_with_enotempty(fs):
    new_dir(fs, ROOT, b"src")
    dst = new_dir(fs, ROOT, b"dst")
    new_file(fs, dst, b"f")
    assert errno_of(fs.rename, ROOT, b"src", ROOT, b"dst") == errno.ENOTEMPTY


def test_rename_of_a_directory_over_a_file_fails_with_enotdir(fs):
    new_dir(fs, ROOT, b"d")
    new_file(fs, ROOT, b"f")
    assert errno_of(fs.rename, ROOT, b"d", ROOT, b"f") == errno.ENOTDIR


def test_rename_of_a_file_over_a_directory_fails_with_eisdir(fs):
    new_dir(fs, ROOT, b"d")
    new_file(fs, ROOT, b"f")
    assert errno_of(fs.rename, ROOT, b"f", ROOT, b"d") == errno.EISDIR


def test_rename_of_a_missing_name_fails_with_enoent(fs):
    assert errno_of(fs.rename, ROOT, b"nothing", ROOT, b"x") == errno.ENOENT


def test_rename_noreplace_over_an_existing_name_fails_with_eexist(fs):
    new_file(fs, ROOT, b"a")
    new_file(fs, ROOT, b"b")
    assert errno_of(fs.rename, ROOT, b"a", ROOT, b"b", NOREPLACE) == errno.EEXIST


def test_rename_noreplace_to_a_free_name_moves_the_entry(fs):
    ino = new_file(fs, ROOT, b"a")
    fs.rename(ROOT, b"a", ROOT, b"b", NOREPLACE)
    assert fs.lookup(ROOT, b"b").ino == ino


def test_rename_exchange_swaps_a_file_and_a_directory_in_different_parents(fs):
    p = new_dir(fs, ROOT, b"p")
    q = new_dir(fs, ROOT, b"q")
    f = new_file(fs, p, b"f", b"data")
    d = new_dir(fs, q, b"d")
    fs.rename(p, b"f", q, b"d", EXCHANGE)
    assert fs.lookup(p, b"f").ino == d
    assert fs.lookup(q, b"d").ino == f
    assert (fs.getattr(p).nlink, fs.getattr(q).nlink) == (3, 2)
    assert fs.lookup(d, b"..").ino == p
    assert [e[1].ino for e in fs.readdir(d)][:2] == [d, p]


def test_rename_exchange_with_a_missing_target_fails_with_enoent(fs):
    new_file(fs, ROOT, b"a")
    assert errno_of(fs.rename, ROOT, b"a", ROOT, b"b", EXCHANGE) == errno.ENOENT


def test_rename_with_both_noreplace_and_exchange_fails_with_einval(fs):
    new_file(fs, ROOT, b"a")
    new_file(fs, ROOT, b"b")
    assert errno_of(fs.rename, ROOT, b"a", ROOT, b"b", NOREPLACE | EXCHANGE) == errno.EINVAL


def test_rename_of_a_directory_into_its_own_subtree_fails_with_einval(fs):
    a = new_dir(fs, ROOT, b"a")
    b = new_dir(fs, a, b"b")
    assert errno_of(fs.rename, ROOT, b"a", b, b"x") == errno.EINVAL
    assert errno_of(fs.rename, ROOT, b"a", a, b"x") == errno.EINVAL
    assert errno_of(fs.rename, ROOT, b"a", b, b"x", EXCHANGE) == errno.ENOENT
    new_file(fs, b, b"x")
    assert errno_of(fs.rename, ROOT, b"a", b, b"x", EXCHANGE) == errno.EINVAL


def test_rename_over_an_ancestor_of_the_source_fails_with_enotempty(fs):
    a = new_dir(fs, ROOT, b"a")
    b = new_dir(fs, a, b"b")
    new_file(fs, b, b"f")
    assert errno_of(fs.rename, b, b"f", ROOT, b"a") == errno.ENOTEMPTY
    assert errno_of(fs.rename, b, b"f", ROOT, b"a", EXCHANGE) == errno.EINVAL


def test_rename_of_a_directory_moves_one_link_between_the_parents_and_its_dotdot(fs):
    p = new_dir(fs, ROOT, b"p")
    q = new_dir(fs, ROOT, b"q")
    d = new_dir(fs, p, b"d")
    fs.rename(p, b"d", q, b"d")
    assert (fs.getattr(p).nlink, fs.getattr(q).nlink) == (2, 3)
    assert fs.lookup(d, b"..").ino == q


def test_rename_between_two_names_of_one_file_changes_nothing(fs):
    ino = new_file(fs, ROOT, b"a")
    fs.link(ino, ROOT, b"b")
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert sorted(names(fs, ROOT)) == [b".", b"..", b"a", b"b"]
    assert fs.getattr(ino).nlink == 2


def test_rename_updates_the_ctime_of_the_moved_and_replaced_inodes_and_both_parents_times(fs, clock):
    p = new_dir(fs, ROOT, b"p")
    q = new_dir(fs, ROOT, b"q")
    moved = new_file(fs, p, b"f")
    replaced = fs.create(q, b"g", 0o644)[1].ino  # stays open and known: it lives on
    old = {ino: fs.getattr(ino) for ino in (p, q, moved, replaced)}
    fs.rename(p, b"f", q, b"g")
    new = {ino: fs.getattr(ino) for ino in (p, q, moved, replaced)}
    for ino in (p, q, moved, replaced):
        assert new[ino].ctime_ns > old[ino].ctime_ns
    for ino in (p, q):
        assert new[ino].mtime_ns > old[ino].mtime_ns
    assert new[moved].mtime_ns == old[moved].mtime_ns
    assert new[replaced].nlink == 0


# -- data: open, read, write, release, fsync ------------------------------------------------


def test_partial_overwrites_at_any_offset_read_back_exactly(fs):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    model = bytearray()
    for offset, length in [(0, 100), (50, 10), (90, 700), (5000, 3), (4000, 2000), (0, 1), (1, 70_000),
                           (65_000, 200_000), (10, 5)]:
        data = os.urandom(length)
        fs.write(fh, offset, data)
        model.extend(bytes(max(0, offset + length - len(model))))
        model[offset:offset + length] = data
        assert fs.read(fh, 0, len(model) + 10) == bytes(model)
    for offset, length in [(0, 1), (99, 1000), (4999, 2), (len(model) - 1, 5), (len(model), 5), (123_456, 1)]:
        assert fs.read(fh, offset, length) == bytes(model[offset:offset + length])
    fs.release(fh)
    fs = remount(fs)
    assert contents(fs, attr.ino) == bytes(model)


def test_a_write_past_the_end_leaves_a_hole_that_reads_as_zeros(fs):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, b"start")
    fs.write(fh, 1 << 20, b"end")
    assert fs.getattr(attr.ino).size == (1 << 20) + 3
    assert fs.read(fh, 0, (1 << 20) + 3) == b"start" + bytes((1 << 20) - 5) + b"end"


def test_a_small_file_stays_inline_until_it_outgrows_the_limit(fs):
    limit = inline_max(fs.engine)
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, b"a" * 10)
    fs.write(fh, 20, b"b" * 10)
    assert all(ext.inline is not None for _, ext in extents_of(fs, attr.ino))
    fs.write(fh, limit, b"c")
    assert all(ext.inline is None for _, ext in extents_of(fs, attr.ino))
    assert fs.read(fh, 0, limit + 1) == b"a" * 10 + bytes(10) + b"b" * 10 + bytes(limit - 30) + b"c"


def test_a_big_write_is_split_into_regions_that_never_cross_a_bucket(fs):
    data = os.urandom(300_000)
    ino = new_file(fs, ROOT, b"f", data)
    exts = extents_of(fs, ino)
    assert len(exts) >= 3
    bucket = fs.engine.sb.bucket_size
    for _, ext in exts:
        assert ext.region_len <= min(128 << 10, bucket)
        assert fs.engine.sb.bucket_of(ext.region_addr) == fs.engine.sb.bucket_of(ext.region_addr + ext.region_len - 1)
    assert contents(fs, ino) == data


def test_read_and_write_on_an_unknown_handle_fail_with_ebadf(fs):
    fh, _ = fs.create(ROOT, b"f", 0o644)
    fs.release(fh)
    assert errno_of(fs.read, fh, 0, 1) == errno.EBADF
    assert errno_of(fs.write, fh, 0, b"x") == errno.EBADF
    assert errno_of(fs.release, fh) == errno.EBADF


def test_open_with_o_trunc_empties_the_file(fs):
    ino = new_file(fs, ROOT, b"f", b"old contents")
    fh = fs.open(ino, os.O_WRONLY | os.O_TRUNC)
    assert fs.getattr(ino).size == 0
    fs.release(fh)


def test_open_of_a_directory_for_writing_fails_with_eisdir(fs):
    assert errno_of(fs.open, ROOT, os.O_RDWR) == errno.EISDIR


def test_a_read_of_data_whose_region_is_corrupt_fails_with_eio(fs):
    data = os.urandom(50_000)
    ino = new_file(fs, ROOT, b"f", data)
    fs.fsync_now()
    # A later durable entry makes the file's entry known durable; otherwise
    # replay verifies its data and ends the chain before it (invariant 4).
    fs.mkdir(ROOT, b"later", 0o755)
    fs.fsync_now()
    [(_, ext)] = extents_of(fs, ino)
    image = fs.engine.device.durable_image()
    image[ext.region_addr + 100] ^= 0xFF
    fs = FileSystem.mount(FaultDevice(image))
    fh = fs.open(ino, os.O_RDONLY)
    assert errno_of(fs.read, fh, 0, 10) == errno.EIO
    fs.release(fh)


def test_a_read_updates_atime_when_it_is_older_than_mtime(fs, clock):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, b"data")
    fs.setattr(attr.ino, atime_ns=1)
    fs.read(fh, 0, 4)
    assert fs.getattr(attr.ino).atime_ns > fs.getattr(attr.ino).mtime_ns
    fs.release(fh)


def test_fsync_makes_written_data_survive_a_crash(fs):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, b"durable")
    trio.run(fs.fsync, fh, False)
    fs.write(fh, 7, b" and lost")
    fs = crash(fs)
    assert fs.lookup(ROOT, b"f").ino == attr.ino
    assert contents(fs, attr.ino) == b"durable"
    assert check_engine(fs.engine) == []


# -- readdir --------------------------------------------------------------------------


def test_readdir_lists_dot_dotdot_and_every_entry_once_with_increasing_cookies(fs):
    d = new_dir(fs, ROOT, b"d")
    made = {b"f%d" % i for i in range(300)}
    for name in made:
        fs.mknod(d, name, stat.S_IFREG | 0o644)
    entries = list(fs.readdir(d))
    assert [e[0] for e in entries[:2]] == [b".", b".."]
    assert [e[1].ino for e in entries[:2]] == [d, ROOT]
    assert sorted(e[0] for e in entries[2:]) == sorted(made)
    cookies = [e[2] for e in entries]
    assert cookies == sorted(set(cookies))
    for name, attr, _ in entries[2:]:
        assert fs.lookup(d, name).ino == attr.ino


def test_readdir_resumed_from_a_cookie_skips_and_repeats_nothing_while_the_directory_changes(fs):
    d = new_dir(fs, ROOT, b"d")
    stable = {b"keep%d" % i for i in range(200)}
    doomed = [b"gone%d" % i for i in range(100)]
    for name in sorted(stable) + doomed:
        fs.mknod(d, name, stat.S_IFREG | 0o644)
    seen: list[bytes] = []
    cookie = 0
    added = 0
    while True:
        chunk = []
        for name, _, next_cookie in fs.readdir(d, cookie):
            chunk.append(name)
            cookie = next_cookie
            if len(chunk) == 17:
                break  # the kernel's buffer is full; it comes back with the cookie
        if not chunk:
            break
        seen.extend(chunk)
        # Between two calls others change the directory: remove some, add some.
        for _ in range(3):
            if doomed:
                fs.unlink(d, doomed.pop())
            fs.mknod(d, b"new%d" % added, stat.S_IFREG | 0o644)
            added += 1
    assert len(seen) == len(set(seen)), "an entry came twice"
    assert stable <= set(seen), "an entry present all along was skipped"
    assert {b".", b".."} <= set(seen)


def test_readdir_of_a_removed_directory_fails_with_enoent(fs):
    d = fs.mkdir(ROOT, b"d", 0o755).ino  # still known to the kernel
    fs.rmdir(ROOT, b"d")
    with pytest.raises(FsError) as info:
        list(fs.readdir(d))
    assert info.value.errno == errno.ENOENT


def test_readdir_of_a_file_fails_with_enotdir(fs):
    ino = new_file(fs, ROOT, b"f")
    with pytest.raises(FsError) as info:
        list(fs.readdir(ino))
    assert info.value.errno == errno.ENOTDIR


# -- extended attributes ----------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 2000, 65536])
def test_xattr_values_up_to_64_kib_round_trip_and_survive_a_remount(fs, length):
    ino = new_file(fs, ROOT, b"f")
    value = os.urandom(length)
    fs.setxattr(ino, b"user.v", value)
    assert fs.getxattr(ino, b"user.v") == value
    fs = remount(fs)
    assert fs.getxattr(ino, b"user.v") == value


def test_an_xattr_name_of_255_bytes_holds_a_64_kib_value(fs):
    ino = new_file(fs, ROOT, b"f")
    name = b"user." + b"n" * 250
    fs.setxattr(ino, name, bytes(range(256)) * 256)
    assert fs.getxattr(ino, name) == bytes(range(256)) * 256
    assert fs.listxattr(ino) == [name]


def test_a_smaller_xattr_value_replaces_a_bigger_one_completely(fs):
    ino = new_file(fs, ROOT, b"f")
    fs.setxattr(ino, b"user.v", b"x" * 10_000)
    fs.setxattr(ino, b"user.v", b"short")
    assert fs.getxattr(ino, b"user.v") == b"short"


def test_xattr_value_over_64_kib_fails_with_e2big(fs):
    ino = new_file(fs, ROOT, b"f")
    assert errno_of(fs.setxattr, ino, b"user.v", bytes(65537)) == errno.E2BIG


def test_xattr_create_of_an_existing_name_fails_with_eexist(fs):
    ino = new_file(fs, ROOT, b"f")
    fs.setxattr(ino, b"user.v", b"1", XATTR_CREATE)
    assert errno_of(fs.setxattr, ino, b"user.v", b"2", XATTR_CREATE) == errno.EEXIST
    assert fs.getxattr(ino, b"user.v") == b"1"


def test_xattr_replace_of_a_missing_name_fails_with_enodata(fs):
    ino = new_file(fs, ROOT, b"f")
    assert errno_of(fs.setxattr, ino, b"user.v", b"1", XATTR_REPLACE) == errno.ENODATA
    fs.setxattr(ino, b"user.v", b"1")
    fs.setxattr(ino, b"user.v", b"2", XATTR_REPLACE)
    assert fs.getxattr(ino, b"user.v") == b"2"


def test_getxattr_and_removexattr_of_a_missing_name_fail_with_enodata(fs):
    ino = new_file(fs, ROOT, b"f")
    assert errno_of(fs.getxattr, ino, b"user.none") == errno.ENODATA
    assert errno_of(fs.removexattr, ino, b"user.none") == errno.ENODATA


def test_listxattr_names_every_attribute_and_removexattr_removes_one(fs):
    ino = new_file(fs, ROOT, b"f")
    for name in (b"user.a", b"trusted.b", b"security.c", b"user.big"):
        fs.setxattr(ino, name, bytes(3000) if name == b"user.big" else b"v")
    assert sorted(fs.listxattr(ino)) == [b"security.c", b"trusted.b", b"user.a", b"user.big"]
    fs.removexattr(ino, b"user.big")
    assert sorted(fs.listxattr(ino)) == [b"security.c", b"trusted.b", b"user.a"]
    assert errno_of(fs.getxattr, ino, b"user.big") == errno.ENODATA


def test_xattr_names_outside_the_known_namespaces_or_too_long_are_refused(fs):
    ino = new_file(fs, ROOT, b"f")
    assert errno_of(fs.setxattr, ino, b"system.posix_acl_access", b"x") == errno.EOPNOTSUPP
    assert errno_of(fs.setxattr, ino, b"user." + b"x" * 251, b"x") == errno.ERANGE
    assert errno_of(fs.getxattr, ino, b"") == errno.ERANGE


# -- the filesystem as a whole ------------------------------------------------------------


def test_statfs_reports_the_size_and_free_space_that_drops_after_a_write(fs):
    before = fs.statfs()
    assert before.block_size == 4096 and before.name_max == 255
    assert 0 < before.blocks_avail <= before.blocks_free < before.blocks
    new_file(fs, ROOT, b"f", os.urandom(1 << 20))
    after = fs.statfs()
    assert before.blocks_free - after.blocks_free >= 256


def test_statfs_shows_no_space_available_once_writes_get_enospc():
    fs = FileSystem.mount(FaultDevice(fresh_image(4 << 20)))
    fh, attr = fs.create(ROOT, b"log", 0o644, os.O_RDWR)
    size = 0
    with pytest.raises(OSError) as info:
        while True:  # small appends: each takes a block of its own
            fs.write(fh, size, b"x" * 100)
            size += 100
    assert info.value.errno == errno.ENOSPC
    assert fs.statfs().blocks_avail * 4096 <= fs.engine.sb.bucket_size


def test_st_blocks_counts_written_data_not_holes(fs):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    assert fs.getattr(attr.ino).blocks == 0
    fs.write(fh, 1 << 20, b"x")
    sparse = fs.getattr(attr.ino)
    assert sparse.blocks == 8  # one 4 KiB block, in 512-byte units
    fs.write(fh, 0, os.urandom(100_000))
    assert fs.getattr(attr.ino).blocks * 512 >= 100_001
    fs.setattr(attr.ino, size=0)
    assert fs.getattr(attr.ino).blocks == 0
    fs.release(fh)


def test_inode_numbers_are_never_reused_across_deletes_and_remounts(fs):
    seen = set()
    for round_ in range(3):
        for i in range(5):
            ino = new_file(fs, ROOT, b"f%d" % i)
            assert ino not in seen
            seen.add(ino)
            fs.unlink(ROOT, b"f%d" % i)
        fs = remount(fs)
    ino = new_dir(fs, ROOT, b"d")
    assert ino > max(seen)


# -- timestamps ---------------------------------------------------------------------------


def test_timestamps_keep_their_nanoseconds(fs, clock):
    attr = fs.getattr(new_file(fs, ROOT, b"f"))
    assert attr.mtime_ns % 1000 != 0 and attr.ctime_ns == attr.mtime_ns == attr.atime_ns


def test_create_sets_the_parent_mtime_and_ctime(fs, clock):
    old = fs.getattr(ROOT)
    attr = fs.create(ROOT, b"f", 0o644)[1]
    new = fs.getattr(ROOT)
    assert new.mtime_ns == new.ctime_ns == attr.ctime_ns > old.mtime_ns


def test_mkdir_symlink_link_unlink_and_rmdir_set_the_parent_mtime_and_ctime(fs, clock):
    f = new_file(fs, ROOT, b"f")
    for call in (lambda: fs.mkdir(ROOT, b"d", 0o755), lambda: fs.symlink(ROOT, b"l", b"f"),
                 lambda: fs.link(f, ROOT, b"g"), lambda: fs.unlink(ROOT, b"g"), lambda: fs.rmdir(ROOT, b"d")):
        old = fs.getattr(ROOT)
        call()
        new = fs.getattr(ROOT)
        assert new.mtime_ns > old.mtime_ns and new.ctime_ns > old.ctime_ns


def test_write_updates_mtime_and_ctime(fs, clock):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, b"x")
    new = fs.getattr(attr.ino)
    assert new.mtime_ns == new.ctime_ns > attr.mtime_ns
    fs.release(fh)


def test_truncate_updates_mtime_and_ctime(fs, clock):
    ino = new_file(fs, ROOT, b"f", b"data")
    old = fs.getattr(ino)
    new = fs.setattr(ino, size=1)
    assert new.mtime_ns > old.mtime_ns and new.ctime_ns > old.ctime_ns


def test_chmod_chown_and_xattr_changes_update_ctime_only(fs, clock):
    ino = new_file(fs, ROOT, b"f", b"data")
    for call in (lambda: fs.setattr(ino, mode=0o600), lambda: fs.setattr(ino, uid=5),
                 lambda: fs.setxattr(ino, b"user.a", b"1"), lambda: fs.removexattr(ino, b"user.a")):
        old = fs.getattr(ino)
        call()
        new = fs.getattr(ino)
        assert new.ctime_ns > old.ctime_ns and new.mtime_ns == old.mtime_ns


def test_unlink_updates_the_ctime_of_a_file_that_keeps_other_names(fs, clock):
    ino = new_file(fs, ROOT, b"f")
    fs.link(ino, ROOT, b"g")
    old = fs.getattr(ino)
    fs.unlink(ROOT, b"f")
    assert fs.getattr(ino).ctime_ns > old.ctime_ns


# -- setuid and setgid --------------------------------------------------------------------


def test_new_entries_in_a_setgid_directory_take_its_group_and_subdirectories_keep_setgid(fs):
    d = new_dir(fs, ROOT, b"shared", 0o2775, Ctx(uid=0, gid=50))
    f = fs.create(d, b"f", 0o644, os.O_RDWR, USER)[1]
    sub = fs.mkdir(d, b"sub", 0o755, USER)
    node = fs.mknod(d, b"p", stat.S_IFIFO | 0o644, 0, USER)
    assert (f.uid, f.gid) == (1000, 50)
    assert node.gid == 50
    assert sub.gid == 50 and sub.mode == stat.S_IFDIR | 0o2755
    assert stat.S_IMODE(f.mode) == 0o644


def test_a_write_by_another_user_clears_setuid_and_group_executable_setgid(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o6755)
    fh = fs.open(ino, os.O_RDWR)
    fs.write(fh, 0, b"x", ctx=USER)
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o755
    fs.release(fh)


def test_a_write_by_another_user_keeps_setgid_without_group_execute(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o6745)
    fh = fs.open(ino, os.O_RDWR)
    fs.write(fh, 0, b"x", ctx=USER)
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o2745
    fs.release(fh)


def test_a_write_by_root_keeps_setuid(fs):
    ino = new_file(fs, ROOT, b"f", mode=0o4755)
    fh = fs.open(ino, os.O_RDWR)
    fs.write(fh, 0, b"x", ctx=Ctx(uid=0, gid=0))
    assert stat.S_IMODE(fs.getattr(ino).mode) == 0o4755
    fs.release(fh)


# -- files without names --------------------------------------------------------------------


def test_an_unlinked_open_file_stays_usable_through_its_handle(fs):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.forget(attr.ino)
    fs.write(fh, 0, b"before")
    fs.unlink(ROOT, b"f")
    assert fs.getattr(attr.ino).nlink == 0
    fs.write(fh, 6, os.urandom(200_000))
    fs.setattr(attr.ino, mode=0o600)
    fs.setattr(attr.ino, size=10)
    assert fs.read(fh, 0, 100) == b"before" + fs.read(fh, 6, 4)
    assert fs.getattr(attr.ino).size == 10 and stat.S_IMODE(fs.getattr(attr.ino).mode) == 0o600
    fs.setxattr(attr.ino, b"user.x", b"y")
    assert fs.getxattr(attr.ino, b"user.x") == b"y"
    fs.release(fh)
    assert errno_of(fs.getattr, attr.ino) == errno.ENOENT


def test_an_unlinked_file_goes_when_released_and_forgotten_and_its_space_is_freed(fs):
    free_before = fs.statfs().blocks_free
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, os.urandom(500_000))
    fs.setxattr(attr.ino, b"user.x", bytes(5000))
    fs.unlink(ROOT, b"f")
    fs.release(fh)
    assert fs.getattr(attr.ino).nlink == 0  # the kernel still knows it
    fs.forget(attr.ino)
    assert errno_of(fs.getattr, attr.ino) == errno.ENOENT
    assert extents_of(fs, attr.ino) == []
    with fs.engine.transaction() as t:
        assert list(t.scan(Tree.XATTRS, prefix=(attr.ino,))) == []
    assert fs.statfs().blocks_free >= free_before - 4  # give or take a few btree nodes


def test_orphans_left_by_a_crash_are_deleted_at_mount(fs):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, os.urandom(300_000))
    fs.unlink(ROOT, b"f")
    fs.fsync_now()
    fs = crash(fs)
    assert errno_of(fs.getattr, attr.ino) == errno.ENOENT
    assert extents_of(fs, attr.ino) == []
    assert check_engine(fs.engine) == []
    fs = crash(fs)  # and the deletion itself is durable enough to repeat
    assert errno_of(fs.getattr, attr.ino) == errno.ENOENT


def test_orphans_still_open_at_a_clean_unmount_are_deleted_at_the_next_mount(fs):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, b"x" * 5000)
    fs.unlink(ROOT, b"f")
    fs = remount(fs)
    assert errno_of(fs.getattr, attr.ino) == errno.ENOENT


def test_an_unlink_succeeds_even_when_deleting_the_orphan_fails_and_mount_deletes_it(fs, monkeypatch):
    ino = new_file(fs, ROOT, b"f", os.urandom(100_000))

    def no_space(*args):
        raise OSError(errno.ENOSPC, "no space left for metadata")

    monkeypatch.setattr(longops, "run", no_space)
    fs.unlink(ROOT, b"f")
    assert errno_of(fs.lookup, ROOT, b"f") == errno.ENOENT
    monkeypatch.undo()
    fs.fsync_now()
    fs = crash(fs)
    assert errno_of(fs.getattr, ino) == errno.ENOENT
    assert extents_of(fs, ino) == []
    assert check_engine(fs.engine) == []


def test_a_mount_that_cannot_delete_an_orphan_still_mounts_and_keeps_it_for_later(fs, monkeypatch):
    fh, attr = fs.create(ROOT, b"f", 0o644, os.O_RDWR)
    fs.write(fh, 0, b"x" * 5000)
    fs.unlink(ROOT, b"f")
    fs.fsync_now()
    image = fs.engine.device.durable_image()

    def no_space(self, ino):
        raise OSError(errno.ENOSPC, "no space left for metadata")

    monkeypatch.setattr(FileSystem, "_delete_inode", no_space)
    fs = FileSystem.mount(FaultDevice(bytearray(image)))
    assert fs.getattr(attr.ino).nlink == 0
    monkeypatch.undo()
    fs = FileSystem.mount(FaultDevice(bytearray(image)))
    assert errno_of(fs.getattr, attr.ino) == errno.ENOENT


# -- long operations ------------------------------------------------------------------------


def many_extents_file(fs: FileSystem, name: bytes, count: int) -> tuple[int, bytes]:
    """A file of `count` separate one-block extents with holes between them."""
    fh, attr = fs.create(ROOT, name, 0o644, os.O_RDWR)
    model = bytearray()
    for i in range(count):
        data = bytes([i % 251 + 1]) * 100
        offset = i * 8192
        fs.write(fh, offset, data)
        model.extend(bytes(offset + len(data) - len(model)))
        model[offset:offset + len(data)] = data
    fs.release(fh)
    fs.forget(attr.ino)
    assert len(extents_of(fs, attr.ino)) == count
    return attr.ino, bytes(model)


def test_truncating_a_file_of_more_than_256_extents_runs_as_several_logged_steps(fs):
    ino, data = many_extents_file(fs, b"f", 600)
    commits = []
    original = fs.engine._commit
    fs.engine._commit = lambda updates: commits.append(updates) or original(updates)
    keep = 50 * 8192 + 40  # cuts extent 50 in the middle
    fs.setattr(ino, size=keep)
    del fs.engine._commit
    assert 3 <= len(commits) <= 5  # the first with the new size, then 549 extents in steps of 256
    assert all(sum(1 for tree, _, v in c if tree == Tree.EXTENTS and v is None) <= 257 for c in commits)
    assert longops.pending(fs.engine) == []
    assert [off for off, _ in extents_of(fs, ino)] == [i * 8192 for i in range(51)]
    assert contents(fs, ino) == data[:keep]
    assert fs.getattr(ino).blocks == 2 * 8  # 50 * 100 + 40 bytes of data, in whole 4 KiB blocks


def test_a_long_truncate_cut_by_a_power_failure_is_finished_at_mount(fs):
    ino, data = many_extents_file(fs, b"f", 700)
    fs.close()
    image = fs.engine.device.durable_image()
    keep = 10 * 8192 + 3
    # Checkpoint before every commit, so that each step is durable when the next starts.
    eager = EngineOptions(checkpoint_fill=0.0)
    probe = FaultDevice(bytearray(image))
    FileSystem.mount(probe, eager).setattr(ino, size=keep)
    total_ops = len(probe.ops)
    interrupted = 0
    for cut in range(1, total_ops, max(1, total_ops // 12)):
        dev = FaultDevice(bytearray(image), cut_power_at=cut)
        with pytest.raises(PowerCut):
            FileSystem.mount(dev, eager).setattr(ino, size=keep)
        after = dev.durable_image()
        pending = longops.pending(Engine.open(FaultDevice(bytearray(after)), EngineOptions(read_only=True)))
        interrupted += bool(pending)
        fs = FileSystem.mount(FaultDevice(after))
        assert longops.pending(fs.engine) == []
        size = fs.getattr(ino).size
        assert size in (keep, len(data)), "the truncate must be all or nothing"
        assert contents(fs, ino) == data[:size]
        assert all(off + ext.length <= size for off, ext in extents_of(fs, ino))
        assert check_engine(fs.engine) == []
    assert interrupted, "no power cut fell between two steps of the truncate"


def test_deleting_a_file_of_many_extents_cut_by_a_power_failure_is_finished_at_mount(fs):
    ino, _ = many_extents_file(fs, b"f", 700)
    fs.close()
    image = fs.engine.device.durable_image()
    eager = EngineOptions(checkpoint_fill=0.0)
    probe = FaultDevice(bytearray(image))
    FileSystem.mount(probe, eager).unlink(ROOT, b"f")
    total_ops = len(probe.ops)
    interrupted = 0
    for cut in range(1, total_ops, max(1, total_ops // 10)):
        dev = FaultDevice(bytearray(image), cut_power_at=cut)
        with pytest.raises(PowerCut):
            FileSystem.mount(dev, eager).unlink(ROOT, b"f")
        after = dev.durable_image()
        pending = longops.pending(Engine.open(FaultDevice(bytearray(after)), EngineOptions(read_only=True)))
        interrupted += bool(pending)
        fs = FileSystem.mount(FaultDevice(after))
        if errno_of(fs.lookup, ROOT, b"f") is None:
            continue  # the unlink itself was lost
        assert errno_of(fs.getattr, ino) == errno.ENOENT
        assert extents_of(fs, ino) == []
        assert check_engine(fs.engine) == []
    assert interrupted, "no power cut fell between two steps of the delete"


def appended_file(fs: FileSystem, name: bytes, count: int) -> tuple[int, bytes]:
    """A file grown by `count` appends of 10 bytes: one extent per append once it is not inline."""
    fh, attr = fs.create(ROOT, name, 0o644, os.O_RDWR)
    for i in range(count):
        fs.write(fh, i * 10, b"%010d" % i)
    fs.release(fh)
    fs.forget(attr.ino)
    assert len(extents_of(fs, attr.ino)) > count - 100
    return attr.ino, b"".join(b"%010d" % i for i in range(count))


def test_one_write_over_thousands_of_extents_commits_in_bounded_pieces():
    fs = FileSystem.mount(FaultDevice(fresh_image(16 << 20)))  # each append takes a 4 KiB block
    ino, _ = appended_file(fs, b"log", 3000)
    commits = []
    original = fs.engine._commit
    fs.engine._commit = lambda updates: commits.append(updates) or original(updates)
    fh = fs.open(ino, os.O_RDWR)
    new = os.urandom(30_000)
    assert fs.write(fh, 0, new) == 30_000
    fs.release(fh)
    del fs.engine._commit
    assert len(commits) >= 3
    assert all(sum(1 for tree, _, v in c if tree == Tree.EXTENTS and v is None) <= 257 for c in commits)
    assert contents(fs, ino) == new
    assert check_engine(fs.engine) == []


def test_a_write_in_pieces_cut_by_a_power_failure_leaves_each_byte_old_or_new(fs):
    ino, old = appended_file(fs, b"log", 1000)
    fs.close()
    image = fs.engine.device.durable_image()
    new = b"#" * len(old)
    eager = EngineOptions(checkpoint_fill=0.0)

    def overwrite(dev: FaultDevice) -> None:
        fs = FileSystem.mount(dev, eager)
        fh = fs.open(ino, os.O_RDWR)
        fs.write(fh, 0, new)

    probe = FaultDevice(bytearray(image))
    overwrite(probe)
    total_ops = len(probe.ops)
    torn = 0
    for cut in range(1, total_ops, max(1, total_ops // 12)):
        dev = FaultDevice(bytearray(image), cut_power_at=cut)
        with pytest.raises(PowerCut):
            overwrite(dev)
        fs = FileSystem.mount(FaultDevice(dev.durable_image()))
        got = contents(fs, ino)
        assert len(got) == len(old)
        assert all(g in (o, n) for g, o, n in zip(got, old, new))
        torn += got not in (old, new)
        assert check_engine(fs.engine) == []
    assert torn, "no power cut fell between two pieces of the write"


# -- a full image -----------------------------------------------------------------------------


def fill(fs: FileSystem, ino: int) -> int:
    """Append to `ino` until ENOSPC; returns the size reached."""
    fh = fs.open(ino, os.O_RDWR)
    size = fs.getattr(ino).size
    with pytest.raises(OSError) as info:
        while True:
            fs.write(fh, size, os.urandom(200_000))
            size += 200_000
    fs.release(fh)
    assert info.value.errno == errno.ENOSPC
    return size


def test_a_write_to_a_full_image_fails_with_enospc_and_changes_nothing():
    fs = FileSystem.mount(FaultDevice(fresh_image(4 << 20)))
    ino = new_file(fs, ROOT, b"big")
    size = fill(fs, ino)
    assert fs.getattr(ino).size == size
    data = contents(fs, ino)
    fh = fs.open(ino, os.O_RDWR)
    assert errno_of(fs.write, fh, 0, os.urandom(200_000)) == errno.ENOSPC
    assert contents(fs, ino) == data
    fs.release(fh)
    assert check_engine(fs.engine) == []


def test_a_full_image_is_writable_again_after_deletes():
    fs = FileSystem.mount(FaultDevice(fresh_image(4 << 20)))
    first = new_file(fs, ROOT, b"first")
    fill(fs, first)
    fs.unlink(ROOT, b"first")
    second = new_file(fs, ROOT, b"second")
    assert fill(fs, second) > 1 << 20
    assert check_engine(fs.engine) == []
    fs = remount(fs)
    assert check_engine(fs.engine) == []


def test_a_full_image_can_still_free_space_after_metadata_changes():
    fs = FileSystem.mount(FaultDevice(fresh_image(4 << 20)))
    inos = [new_file(fs, ROOT, b"f%d" % i) for i in range(3)]
    fill(fs, inos[0])
    for i in range(40):  # xattrs still fit, but their checkpoints use up the free buckets
        try:
            fs.setxattr(inos[i % 3], b"user.x%d" % (i % 7), bytes(5000))
        except OSError:
            break
    fs.unlink(ROOT, b"f0")
    fs.setattr(inos[1], size=0)


def test_space_freed_on_a_full_image_is_reused_without_the_image_turning_read_only():
    fs = FileSystem.mount(FaultDevice(fresh_image()))
    ino = new_file(fs, ROOT, b"f")
    fill(fs, ino)
    fs.setattr(ino, size=0)  # frees nearly every bucket, once durable
    space, bucket = fs.engine.space, fs.engine.sb.bucket_size
    durably_free = space.free_count(fs.engine.journal.durable_seq)
    fh = fs.open(ino, os.O_RDWR)
    fs.write(fh, 0, os.urandom((durably_free - 1) * bucket + 4096))  # takes them all
    fs.release(fh)
    fs.close()

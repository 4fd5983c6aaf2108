"""pyfs mounted with FUSE keeps POSIX promises through the kernel, and its
daemon (pyfs/cli/main.py, pyfs/mount/) keeps the life-cycle promises of
pyfs/cli/main.py's docstring: clean unmount by every route, refusal of images in
use or foreign, read-only mounts, survival of bad requests, and no more loss
than the commit interval when the daemon dies (DESIGN.md invariants 6, 8
and 9).

The operation tests share one mount (`work` is a fresh directory on it per
test); the life-cycle tests each mount their own image.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import filecmp
import hashlib
import mmap
import os
import signal
import sqlite3
import stat
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from conftest import PyfsMount, is_mountpoint, make_image, pyfs_cli
from pyfs.engine.check import check_image
from pyfs.engine.device import FileDevice

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="needs /dev/fuse")]

KiB = 1024
MiB = 1024 * KiB


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    work = tmp_path_factory.mktemp("shared-mount")
    (work / "mnt").mkdir()
    m = PyfsMount(make_image(work / "pyfs.img"), work / "mnt", work / "pyfs.log")
    try:
        m.mount()
        yield m
        # Everything the operation tests did leaves a consistent image.
        assert m.umount() == 0
        assert image_is_clean(m.image) == []
    finally:
        m.cleanup()


@pytest.fixture
def work(shared_mount, request) -> Path:
    """A fresh, empty directory on the shared mount."""
    path = shared_mount.mountpoint / request.node.name[:200].replace("/", "_")
    path.mkdir()
    return path


def raises_errno(err: int, fn, *args, **kwargs) -> None:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == err, f"{os.strerror(info.value.errno)} instead of {os.strerror(err)}"


def write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def read_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, MiB):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def image_is_clean(image: Path) -> list:
    with FileDevice.open(image, read_only=True) as device:
        return check_image(device)


_libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
SYS_renameat2 = 316  # x86_64


def renameat2(old: Path, new: Path, flags: int) -> None:
    if hasattr(_libc, "renameat2"):
        rc = _libc.renameat2(AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), ctypes.c_uint(flags))
    else:
        rc = _libc.syscall(SYS_renameat2, AT_FDCWD, bytes(old), AT_FDCWD, bytes(new), ctypes.c_uint(flags))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def tree_snapshot(root: Path) -> dict[str, tuple]:
    """Relative path -> (kind, mode, size, sha256 or link target) for everything under root."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    content = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            else:
                content = None
            out[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                st.st_size if not stat.S_ISDIR(st.st_mode) else 0, content)
    return out


def populate(root: Path) -> dict[str, tuple]:
    """A small tree with every kind of file; returns its snapshot."""
    (root / "dir" / "sub").mkdir(parents=True)
    write_file(root / "small", b"small file\n")
    write_file(root / "dir" / "big", os.urandom(3 * MiB + 17))
    write_file(root / "dir" / "sub" / "empty", b"")
    fd = os.open(root / "sparse", os.O_WRONLY | os.O_CREAT, 0o600)
    os.pwrite(fd, b"end", 5 * MiB)
    os.close(fd)
    os.symlink("dir/big", root / "link")
    os.link(root / "small", root / "dir" / "hardlink")
    os.mkfifo(root / "fifo")
    os.setxattr(root / "small", "user.colour", b"blue")
    return tree_snapshot(root)


# -- files: create, open, read, write ------------------------------------------------------


def test_a_created_file_reads_back_what_was_written(work):
    data = os.urandom(300 * KiB + 5)
    write_file(work / "f", data)
    assert read_file(work / "f") == data
    assert os.stat(work / "f").st_size == len(data)


def test_open_of_a_missing_file_without_o_creat_fails_with_enoent(work):
    raises_errno(errno.ENOENT, os.open, work / "missing", os.O_RDONLY)


def test_o_excl_on_an_existing_file_fails_with_eexist(work):
    write_file(work / "f", b"x")
    raises_errno(errno.EEXIST, os.open, work / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def test_opening_a_directory_for_writing_fails_with_eisdir(work):
    raises_errno(errno.EISDIR, os.open, work, os.O_WRONLY)


def test_o_trunc_empties_a_file_and_o_append_writes_at_the_end(work):
    write_file(work / "f", b"0123456789")
    fd = os.open(work / "f", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"ab")
    os.close(fd)
    assert read_file(work / "f") == b"0123456789ab"
    fd = os.open(work / "f", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert os.stat(work / "f").st_size == 0


def test_writing_past_the_end_leaves_a_hole_that_reads_as_zeros(work):
    fd = os.open(work / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.lseek(fd, 4 * MiB + 123, os.SEEK_SET)
        os.write(fd, b"tail")
        assert os.fstat(fd).st_size == 4 * MiB + 127
    finally:
        os.close(fd)
    data = read_file(work / "f")
    assert data[:4] == b"head" and data[-4:] == b"tail"
    assert data[4:-4] == bytes(4 * MiB + 119)
    assert os.stat(work / "f").st_blocks * 512 < 1 * MiB  # the hole takes no space


def test_seek_past_the_end_alone_does_not_change_the_size(work):
    write_file(work / "f", b"abc")
    fd = os.open(work / "f", os.O_RDWR)
    try:
        assert os.lseek(fd, 1 * MiB, os.SEEK_SET) == 1 * MiB
        assert os.read(fd, 10) == b""
        assert os.fstat(fd).st_size == 3
    finally:
        os.close(fd)


@pytest.mark.parametrize("size", [100, 5000, 600 * KiB], ids=["inline", "small", "multi-region"])
def test_a_partial_overwrite_changes_only_the_bytes_written(work, size):
    data = bytearray(os.urandom(size))
    write_file(work / "f", bytes(data))
    patch = os.urandom(min(3000, size // 3))
    at = size // 3
    fd = os.open(work / "f", os.O_WRONLY)
    os.pwrite(fd, patch, at)
    os.close(fd)
    data[at : at + len(patch)] = patch
    assert read_file(work / "f") == bytes(data)
    assert os.stat(work / "f").st_size == size


def test_truncate_down_drops_data_and_truncate_up_reads_zeros(work):
    data = os.urandom(700 * KiB)
    write_file(work / "f", data)
    os.truncate(work / "f", 100 * KiB + 3)
    assert read_file(work / "f") == data[: 100 * KiB + 3]
    fd = os.open(work / "f", os.O_RDWR)
    os.ftruncate(fd, 2 * MiB)
    os.close(fd)
    assert read_file(work / "f") == data[: 100 * KiB + 3] + bytes(2 * MiB - 100 * KiB - 3)
    os.truncate(work / "f", 0)
    assert read_file(work / "f") == b""


def test_truncating_a_directory_fails_with_eisdir(work):
    raises_errno(errno.EISDIR, os.truncate, work, 0)


# -- names: directories, unlink, symlinks, hard links ----------------------------------------


def test_mkdir_makes_an_empty_directory_and_rmdir_removes_it(work):
    os.mkdir(work / "d", 0o750)
    st = os.stat(work / "d")
    assert stat.S_ISDIR(st.st_mode) and st.st_nlink == 2
    assert os.listdir(work / "d") == []
    os.rmdir(work / "d")
    assert not os.path.exists(work / "d")


def test_mkdir_of_an_existing_name_fails_with_eexist(work):
    os.mkdir(work / "d")
    raises_errno(errno.EEXIST, os.mkdir, work / "d")


def test_rmdir_of_a_non_empty_directory_fails_with_enotempty(work):
    os.mkdir(work / "d")
    write_file(work / "d" / "f", b"")
    raises_errno(errno.ENOTEMPTY, os.rmdir, work / "d")


def test_rmdir_of_a_file_fails_with_enotdir_and_unlink_of_a_directory_with_eisdir(work):
    write_file(work / "f", b"")
    os.mkdir(work / "d")
    raises_errno(errno.ENOTDIR, os.rmdir, work / "f")
    raises_errno(errno.EISDIR, os.unlink, work / "d")


def test_subdirectories_count_in_the_parents_link_count(work):
    os.mkdir(work / "d")
    os.mkdir(work / "d" / "a")
    os.mkdir(work / "d" / "b")
    assert os.stat(work / "d").st_nlink == 4
    os.rmdir(work / "d" / "a")
    assert os.stat(work / "d").st_nlink == 3


def test_unlink_removes_the_name_and_a_missing_name_fails_with_enoent(work):
    write_file(work / "f", b"data")
    os.unlink(work / "f")
    assert not os.path.exists(work / "f")
    raises_errno(errno.ENOENT, os.unlink, work / "f")


def test_a_symlink_reads_back_its_target_and_is_followed(work):
    write_file(work / "target", b"through the link")
    os.symlink("target", work / "link")
    assert os.readlink(work / "link") == "target"
    assert stat.S_ISLNK(os.lstat(work / "link").st_mode)
    assert read_file(work / "link") == b"through the link"
    long_target = "x/" * 1000 + "y"
    os.symlink(long_target, work / "long")
    assert os.readlink(work / "long") == long_target


def test_a_dangling_symlink_fails_with_enoent_when_followed(work):
    os.symlink("nowhere", work / "link")
    raises_errno(errno.ENOENT, os.stat, work / "link")
    raises_errno(errno.EEXIST, os.symlink, "other", work / "link")


def test_a_hard_link_shares_inode_and_data_and_counts_links(work):
    write_file(work / "a", b"shared")
    os.link(work / "a", work / "b")
    sa, sb = os.stat(work / "a"), os.stat(work / "b")
    assert sa.st_ino == sb.st_ino and sa.st_nlink == sb.st_nlink == 2
    with open(work / "b", "ab") as f:
        f.write(b" data")
    assert read_file(work / "a") == b"shared data"
    os.unlink(work / "a")
    assert os.stat(work / "b").st_nlink == 1
    assert read_file(work / "b") == b"shared data"


def test_a_hard_link_to_a_directory_fails_with_eperm(work):
    os.mkdir(work / "d")
    raises_errno(errno.EPERM, os.link, work / "d", work / "d2")


def test_a_hard_link_over_an_existing_name_fails_with_eexist(work):
    write_file(work / "a", b"")
    write_file(work / "b", b"")
    raises_errno(errno.EEXIST, os.link, work / "a", work / "b")


# -- rename ---------------------------------------------------------------------------------


def test_rename_moves_a_file_between_directories(work):
    os.mkdir(work / "d1")
    os.mkdir(work / "d2")
    write_file(work / "d1" / "f", b"moving")
    ino = os.stat(work / "d1" / "f").st_ino
    os.rename(work / "d1" / "f", work / "d2" / "g")
    assert os.listdir(work / "d1") == []
    assert os.stat(work / "d2" / "g").st_ino == ino
    assert read_file(work / "d2" / "g") == b"moving"


def test_rename_over_a_file_replaces_it_and_an_open_descriptor_keeps_the_old_data(work):
    write_file(work / "new", b"new contents")
    write_file(work / "old", b"old contents")
    fd = os.open(work / "old", os.O_RDONLY)
    try:
        os.rename(work / "new", work / "old")
        assert read_file(work / "old") == b"new contents"
        assert os.pread(fd, 100, 0) == b"old contents"
        assert os.fstat(fd).st_nlink == 0
    finally:
        os.close(fd)
    assert sorted(os.listdir(work)) == ["old"]


def test_rename_of_a_directory_over_an_empty_directory_replaces_it(work):
    os.mkdir(work / "src")
    write_file(work / "src" / "f", b"inside")
    os.mkdir(work / "dst")
    os.rename(work / "src", work / "dst")
    assert os.listdir(work) == ["dst"]
    assert read_file(work / "dst" / "f") == b"inside"
    assert os.stat(work).st_nlink == 3


def test_rename_of_a_directory_over_a_non_empty_directory_fails_with_enotempty(work):
    os.mkdir(work / "src")
    os.mkdir(work / "dst")
    write_file(work / "dst" / "f", b"")
    raises_errno(errno.ENOTEMPTY, os.rename, work / "src", work / "dst")


def test_rename_of_a_file_over_a_directory_fails_with_eisdir_and_the_reverse_with_enotdir(work):
    write_file(work / "f", b"")
    os.mkdir(work / "d")
    raises_errno(errno.EISDIR, os.rename, work / "f", work / "d")
    raises_errno(errno.ENOTDIR, os.rename, work / "d", work / "f")


def test_rename_of_a_directory_into_its_own_subtree_fails_with_einval(work):
    (work / "a" / "b" / "c").mkdir(parents=True)
    raises_errno(errno.EINVAL, os.rename, work / "a", work / "a" / "b" / "c" / "a")


def test_rename_of_a_missing_name_fails_with_enoent(work):
    raises_errno(errno.ENOENT, os.rename, work / "missing", work / "other")


def test_rename_moves_a_directory_and_its_dotdot_follows(work):
    (work / "a" / "sub").mkdir(parents=True)
    os.mkdir(work / "b")
    os.rename(work / "a" / "sub", work / "b" / "sub")
    assert os.stat(work / "b" / "sub" / "..").st_ino == os.stat(work / "b").st_ino
    assert os.stat(work / "a").st_nlink == 2
    assert os.stat(work / "b").st_nlink == 3


def test_rename_noreplace_fails_with_eexist_on_an_existing_name_and_moves_otherwise(work):
    write_file(work / "a", b"a")
    write_file(work / "b", b"b")
    raises_errno(errno.EEXIST, renameat2, work / "a", work / "b", RENAME_NOREPLACE)
    assert read_file(work / "b") == b"b"
    renameat2(work / "a", work / "c", RENAME_NOREPLACE)
    assert sorted(os.listdir(work)) == ["b", "c"]


def test_rename_exchange_swaps_a_file_and_a_directory(work):
    write_file(work / "f", b"file")
    (work / "d").mkdir()
    write_file(work / "d" / "inner", b"inner")
    (work / "other").mkdir()
    renameat2(work / "f", work / "d", RENAME_EXCHANGE)
    assert read_file(work / "d") == b"file"
    assert read_file(work / "f" / "inner") == b"inner"
    renameat2(work / "f", work / "other", RENAME_EXCHANGE)
    assert read_file(work / "other" / "inner") == b"inner"
    assert os.stat(work / "f").st_nlink == 2
    assert os.stat(work).st_nlink == 4


def test_rename_exchange_with_a_missing_name_fails_with_enoent(work):
    write_file(work / "a", b"")
    raises_errno(errno.ENOENT, renameat2, work / "a", work / "missing", RENAME_EXCHANGE)


# -- special files, attributes, xattrs --------------------------------------------------------


def test_a_fifo_made_by_mkfifo_is_a_fifo_and_passes_data(work):
    os.mkfifo(work / "fifo", 0o640)
    st = os.lstat(work / "fifo")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640 & ~_umask()
    fd = os.open(work / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        os.write(fd, b"through the pipe")
        assert os.read(fd, 100) == b"through the pipe"
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_chmod_and_chown_change_mode_and_owner(work):
    write_file(work / "f", b"")
    os.chmod(work / "f", 0o4751)
    assert stat.S_IMODE(os.stat(work / "f").st_mode) == 0o4751
    os.chown(work / "f", 1234, 5678)
    st = os.stat(work / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert not st.st_mode & stat.S_ISUID  # chown clears set-user-ID
    os.chown(work / "f", -1, 42)
    assert (os.stat(work / "f").st_uid, os.stat(work / "f").st_gid) == (1234, 42)


def test_utime_with_nanoseconds_sets_exact_timestamps(work):
    write_file(work / "f", b"")
    os.utime(work / "f", ns=(1_234_567_890_123_456_789, 987_654_321_987_654_321))
    st = os.stat(work / "f")
    assert st.st_atime_ns == 1_234_567_890_123_456_789
    assert st.st_mtime_ns == 987_654_321_987_654_321
    before = time.time_ns()
    os.utime(work / "f")  # UTIME_NOW
    st = os.stat(work / "f")
    assert before - 10**9 <= st.st_mtime_ns <= time.time_ns() + 10**9


def test_symlink_timestamps_change_without_following_it(work):
    write_file(work / "target", b"")
    os.symlink("target", work / "link")
    os.utime(work / "link", ns=(10**18, 2 * 10**18), follow_symlinks=False)
    assert os.lstat(work / "link").st_mtime_ns == 2 * 10**18
    assert os.stat(work / "target").st_mtime_ns != 2 * 10**18


def test_xattrs_are_set_listed_read_and_removed(work):
    write_file(work / "f", b"")
    os.setxattr(work / "f", "user.a", b"1")
    os.setxattr(work / "f", "user.b", b"")
    assert sorted(os.listxattr(work / "f")) == ["user.a", "user.b"]
    assert os.getxattr(work / "f", "user.a") == b"1"
    assert os.getxattr(work / "f", "user.b") == b""
    os.removexattr(work / "f", "user.a")
    assert os.listxattr(work / "f") == ["user.b"]


def test_xattr_create_on_an_existing_name_fails_with_eexist(work):
    write_file(work / "f", b"")
    os.setxattr(work / "f", "user.a", b"1", os.XATTR_CREATE)
    raises_errno(errno.EEXIST, os.setxattr, work / "f", "user.a", b"2", os.XATTR_CREATE)
    assert os.getxattr(work / "f", "user.a") == b"1"


def test_xattr_replace_of_a_missing_name_fails_with_enodata(work):
    write_file(work / "f", b"")
    raises_errno(errno.ENODATA, os.setxattr, work / "f", "user.a", b"1", os.XATTR_REPLACE)
    os.setxattr(work / "f", "user.a", b"1")
    os.setxattr(work / "f", "user.a", b"2", os.XATTR_REPLACE)
    assert os.getxattr(work / "f", "user.a") == b"2"


def test_reading_or_removing_a_missing_xattr_fails_with_enodata(work):
    write_file(work / "f", b"")
    raises_errno(errno.ENODATA, os.getxattr, work / "f", "user.missing")
    raises_errno(errno.ENODATA, os.removexattr, work / "f", "user.missing")


def test_a_64_kib_xattr_value_round_trips_and_a_larger_one_fails_with_e2big(work):
    write_file(work / "f", b"")
    value = os.urandom(64 * KiB)
    os.setxattr(work / "f", "user.big", value)
    assert os.getxattr(work / "f", "user.big") == value
    raises_errno(errno.E2BIG, os.setxattr, work / "f", "user.bigger", value + b"x")


def test_xattrs_work_on_directories_and_symlinks_without_following(work):
    os.mkdir(work / "d")
    os.setxattr(work / "d", "user.dir", b"d")
    assert os.getxattr(work / "d", "user.dir") == b"d"
    os.symlink("d", work / "link")
    os.setxattr(work / "link", "trusted.link", b"l", follow_symlinks=False)
    assert os.getxattr(work / "link", "trusted.link", follow_symlinks=False) == b"l"
    raises_errno(errno.ENODATA, os.getxattr, work / "d", "trusted.link")


# -- the filesystem as a whole ----------------------------------------------------------------


def test_statvfs_reports_namemax_255_and_sensible_block_counts(work):
    before = os.statvfs(work)
    assert before.f_namemax == 255
    assert before.f_bsize == before.f_frsize == 4096
    total = before.f_blocks * before.f_frsize
    assert 200 * MiB <= total <= 256 * MiB
    assert 0 < before.f_bavail <= before.f_bfree <= before.f_blocks
    assert before.f_files > 0 and before.f_ffree <= before.f_files
    write_file(work / "f", os.urandom(8 * MiB))
    fd = os.open(work / "f", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    after = os.statvfs(work)
    assert before.f_bfree - after.f_bfree >= 8 * MiB // 4096


NAME_256 = "n" * 256


def test_a_256_byte_name_fails_with_enametoolong_in_open_mkdir_and_stat(work):
    raises_errno(errno.ENAMETOOLONG, os.open, work / NAME_256, os.O_WRONLY | os.O_CREAT)
    raises_errno(errno.ENAMETOOLONG, os.mkdir, work / NAME_256)
    raises_errno(errno.ENAMETOOLONG, os.stat, work / NAME_256)
    raises_errno(errno.ENAMETOOLONG, os.symlink, "x", work / NAME_256)
    write_file(work / "f", b"")
    raises_errno(errno.ENAMETOOLONG, os.rename, work / "f", work / NAME_256)
    raises_errno(errno.ENAMETOOLONG, os.link, work / "f", work / NAME_256)


def test_a_255_byte_name_is_allowed(work):
    name = "m" * 255
    write_file(work / name, b"ok")
    assert os.listdir(work) == [name]
    assert read_file(work / name) == b"ok"


def test_readdir_lists_every_entry_once_with_the_inode_numbers_stat_gives(work):
    names = {f"entry-{i:04d}" for i in range(400)}
    for name in names:
        if name.endswith("7"):
            os.mkdir(work / name)
        else:
            write_file(work / name, b"")
    seen = {}
    with os.scandir(work) as it:
        for entry in it:
            assert entry.name not in seen
            seen[entry.name] = entry.inode()
    assert set(seen) == names
    for name, ino in seen.items():
        assert os.lstat(work / name).st_ino == ino
    assert os.stat(work / "entry-0007" / "..").st_ino == os.stat(work).st_ino


def test_a_setgid_directory_passes_its_group_and_the_bit_to_new_entries(work):
    os.mkdir(work / "shared")
    os.chown(work / "shared", 0, 4321)
    os.chmod(work / "shared", 0o2775)
    write_file(work / "shared" / "f", b"")
    os.mkdir(work / "shared" / "sub")
    assert os.stat(work / "shared" / "f").st_gid == 4321
    sub = os.stat(work / "shared" / "sub")
    assert sub.st_gid == 4321 and sub.st_mode & stat.S_ISGID


def test_flock_excludes_a_second_exclusive_lock_until_released(work):
    write_file(work / "f", b"")
    fd1 = os.open(work / "f", os.O_RDWR)
    fd2 = os.open(work / "f", os.O_RDWR)
    try:
        fcntl.flock(fd1, fcntl.LOCK_EX)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd1, fcntl.LOCK_UN)
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd1)
        os.close(fd2)


def test_writes_through_a_shared_mmap_are_read_back_after_msync_and_reopen(work):
    size = 5 * 4096 + 100
    write_file(work / "f", bytes(size))
    patch = os.urandom(3 * 4096)
    fd = os.open(work / "f", os.O_RDWR)
    try:
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
            mm[1000 : 1000 + len(patch)] = patch
            mm[size - 5 :] = b"TAIL!"
            mm.flush()
    finally:
        os.close(fd)
    expected = bytearray(size)
    expected[1000 : 1000 + len(patch)] = patch
    expected[size - 5 :] = b"TAIL!"
    assert read_file(work / "f") == bytes(expected)
    assert os.stat(work / "f").st_size == size


def test_an_unlinked_open_file_stays_readable_and_writable_until_closed(work):
    data = os.urandom(200 * KiB)
    write_file(work / "f", data)
    fd = os.open(work / "f", os.O_RDWR)
    try:
        os.unlink(work / "f")
        assert os.listdir(work) == []
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, len(data), 0) == data
        os.pwrite(fd, b"still here", 150 * KiB)
        os.fsync(fd)
        assert os.pread(fd, 10, 150 * KiB) == b"still here"
        os.ftruncate(fd, 10)
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    raises_errno(errno.ENOENT, os.stat, work / "f")


def test_fsync_of_a_file_and_a_directory_succeeds(work):
    write_file(work / "f", b"durable")
    fd = os.open(work / "f", os.O_RDWR)
    os.fsync(fd)
    os.fdatasync(fd)
    os.close(fd)
    dfd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(dfd)
    os.close(dfd)


# -- round trips with ordinary tools ------------------------------------------------------------

STDLIB = Path(sysconfig.get_paths()["stdlib"])
# The big parts (tests, installed packages, build config, GUI) would only make the test slow.
STDLIB_SKIP = {"test", "site-packages", "dist-packages", "lib-dynload", "idlelib", "tkinter",
               "lib2to3", "ensurepip", "distutils", "unittest", "pydoc_data", "__pycache__",
               "encodings", "ctypes", "turtledemo"}


def stdlib_entries() -> list[str]:
    return sorted(e for e in os.listdir(STDLIB) if e not in STDLIB_SKIP and not e.startswith("config-"))


def assert_same_trees(src: Path, entries: list[str], dst: Path) -> None:
    """Same names, kinds, modes, contents, symlink targets and mtimes."""
    compared = 0
    for entry in entries:
        for dirpath, dirnames, filenames in os.walk(src / entry):
            rel = Path(dirpath).relative_to(src)
            assert sorted(os.listdir(dst / rel)) == sorted(dirnames + filenames), rel
            for name in [".", *dirnames, *filenames]:
                a, b = src / rel / name, dst / rel / name
                sa, sb = os.lstat(a), os.lstat(b)
                assert sa.st_mode == sb.st_mode, a
                assert sa.st_mtime_ns == sb.st_mtime_ns or stat.S_ISDIR(sa.st_mode), a
                if stat.S_ISREG(sa.st_mode):
                    assert sa.st_size == sb.st_size and filecmp.cmp(a, b, shallow=False), a
                    compared += 1
                elif stat.S_ISLNK(sa.st_mode):
                    assert os.readlink(a) == os.readlink(b), a
    assert compared > 500


def test_cp_a_of_the_standard_library_copies_contents_and_modes(work):
    entries = stdlib_entries()
    subprocess.run(["cp", "-a", *entries, str(work)], cwd=STDLIB, check=True, timeout=120)
    assert_same_trees(STDLIB, entries, work)


def test_tar_of_the_standard_library_extracts_contents_and_modes(work):
    entries = stdlib_entries()
    tar_c = subprocess.Popen(["tar", "-cf", "-", *entries], cwd=STDLIB, stdout=subprocess.PIPE)
    subprocess.run(["tar", "-xpf", "-"], cwd=work, stdin=tar_c.stdout, check=True, timeout=120)
    tar_c.stdout.close()
    assert tar_c.wait(timeout=60) == 0
    assert_same_trees(STDLIB, entries, work)


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=pyfs test", "-c", "user.email=pyfs@example.invalid",
         "-c", "init.defaultBranch=main", "-c", "gc.auto=0", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def test_a_git_repository_committed_on_the_mount_passes_git_fsck(work):
    repo = work / "repo"
    git(work, "init", "-q", str(repo))
    for i in range(30):
        write_file(repo / f"file{i}.txt", f"line {i}\n".encode() * (i + 1))
    (repo / "sub").mkdir()
    write_file(repo / "sub" / "blob.bin", os.urandom(200 * KiB))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first")
    write_file(repo / "file0.txt", b"changed\n")
    os.rename(repo / "file1.txt", repo / "renamed.txt")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    git(repo, "gc", "-q")  # packs objects, rewrites refs: renames and unlinks galore
    assert git(repo, "fsck", "--full", "--strict") == ""
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "log", "--format=%s").split() == ["second", "first"]


def test_a_sqlite_database_of_10k_rows_passes_its_integrity_check(work):
    db = sqlite3.connect(work / "test.db")
    try:
        db.execute("create table t (id integer primary key, name text, payload blob)")
        for batch in range(10):
            with db:
                db.executemany("insert into t (name, payload) values (?, ?)",
                               ((f"row {batch}-{i}", os.urandom(100)) for i in range(1000)))
        with db:
            db.execute("create index t_name on t (name)")
            db.execute("delete from t where id % 7 = 0")
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
        count = db.execute("select count(*) from t").fetchone()[0]
    finally:
        db.close()
    db = sqlite3.connect(work / "test.db")
    try:
        assert db.execute("select count(*) from t").fetchone()[0] == count == 10000 - 10000 // 7
    finally:
        db.close()


def test_a_sqlite_database_in_wal_mode_passes_its_integrity_check(work):
    db = sqlite3.connect(work / "wal.db")
    try:
        assert db.execute("pragma journal_mode=wal").fetchone() == ("wal",)
        db.execute("create table t (id integer primary key, v text)")
        for batch in range(5):
            with db:
                db.executemany("insert into t (v) values (?)", ((f"{batch}-{i}",) for i in range(1000)))
        db.execute("pragma wal_checkpoint(truncate)")
        assert db.execute("pragma integrity_check").fetchall() == [("ok",)]
        assert db.execute("select count(*) from t").fetchone()[0] == 5000
    finally:
        db.close()


# -- mount life cycle ------------------------------------------------------------------------------


def test_pyfs_umount_ends_the_daemon_cleanly_and_a_remount_finds_everything(pyfs_mount):
    pyfs_mount.mount()
    before = populate(pyfs_mount.mountpoint)
    assert pyfs_mount.umount() == 0
    assert image_is_clean(pyfs_mount.image) == []
    pyfs_mount.mount()
    assert tree_snapshot(pyfs_mount.mountpoint) == before
    assert os.getxattr(pyfs_mount / "small", "user.colour") == b"blue"
    assert pyfs_mount.umount() == 0
    assert image_is_clean(pyfs_mount.image) == []


def test_fusermount_u_ends_the_daemon_with_exit_code_0_after_a_clean_checkpoint(pyfs_mount):
    pyfs_mount.mount()
    before = populate(pyfs_mount.mountpoint)
    assert pyfs_mount.fusermount_umount() == 0
    assert "unmounted cleanly" in pyfs_mount.log.read_text()
    assert image_is_clean(pyfs_mount.image) == []
    pyfs_mount.mount()
    assert tree_snapshot(pyfs_mount.mountpoint) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_daemon_unmounts_cleanly_with_exit_code_0(pyfs_mount, signum):
    pyfs_mount.mount()
    write_file(pyfs_mount / "f", b"written before the signal")
    os.kill(pyfs_mount.pid, signum)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pyfs_mount.pid, signum)  # a second one during shutdown changes nothing
    assert pyfs_mount.wait_daemon() == 0
    assert not is_mountpoint(pyfs_mount.mountpoint)
    assert image_is_clean(pyfs_mount.image) == []
    pyfs_mount.mount()
    assert read_file(pyfs_mount / "f") == b"written before the signal"


def test_files_open_at_unmount_leave_no_orphan_behind(pyfs_mount):
    pyfs_mount.mount()
    write_file(pyfs_mount / "f", os.urandom(300 * KiB))
    fd = os.open(pyfs_mount / "f", os.O_RDONLY)
    os.unlink(pyfs_mount / "f")
    os.kill(pyfs_mount.pid, signal.SIGTERM)
    assert pyfs_mount.wait_daemon() == 0
    with contextlib.suppress(OSError):
        os.close(fd)  # ENOTCONN: the connection is gone
    assert image_is_clean(pyfs_mount.image) == []
    pyfs_mount.mount()
    assert os.listdir(pyfs_mount.mountpoint) == []


def test_a_read_only_mount_reads_but_refuses_writes_with_erofs(pyfs_mount):
    pyfs_mount.mount()
    write_file(pyfs_mount / "f", b"kept")
    os.mkdir(pyfs_mount / "d")
    assert pyfs_mount.umount() == 0
    pyfs_mount.mount("-o", "ro")
    m = pyfs_mount.mountpoint
    assert read_file(m / "f") == b"kept"
    raises_errno(errno.EROFS, os.open, m / "new", os.O_WRONLY | os.O_CREAT)
    raises_errno(errno.EROFS, os.open, m / "f", os.O_WRONLY)
    raises_errno(errno.EROFS, os.mkdir, m / "d2")
    raises_errno(errno.EROFS, os.unlink, m / "f")
    raises_errno(errno.EROFS, os.rename, m / "f", m / "g")
    raises_errno(errno.EROFS, os.chmod, m / "f", 0o600)
    raises_errno(errno.EROFS, os.setxattr, m / "f", "user.x", b"1")
    raises_errno(errno.EROFS, os.truncate, m / "f", 0)
    assert pyfs_umount_cli_ok(pyfs_mount)
    # pyfs umount returns once the read-only daemon let go: a writer may open the image at once.
    FileDevice.open(pyfs_mount.image).close()
    assert pyfs_mount.wait_daemon() == 0
    assert image_is_clean(pyfs_mount.image) == []


def pyfs_umount_cli_ok(m: PyfsMount) -> bool:
    result = pyfs_cli("umount", m.mountpoint)
    assert result.returncode == 0, result.stderr
    return not is_mountpoint(m.mountpoint)


def test_mounting_a_mounted_image_again_fails_with_an_in_use_message(mounted, tmp_path):
    second = tmp_path / "second"
    second.mkdir()
    result = pyfs_cli("mount", mounted.image, second)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "in use" in lines[0], result.stderr
    assert not is_mountpoint(second)
    write_file(mounted / "f", b"first mount still works")
    assert read_file(mounted / "f") == b"first mount still works"


@pytest.mark.parametrize("content", [b"", bytes(4 * MiB), b"not a filesystem\n" * 100000],
                         ids=["empty", "zeros", "text"])
def test_mounting_a_file_that_is_not_pyfs_fails_with_one_line(tmp_path, content):
    image = tmp_path / "foreign.img"
    image.write_bytes(content)
    (tmp_path / "mnt").mkdir()
    result = pyfs_cli("mount", image, tmp_path / "mnt")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("pyfs: ")
    assert not is_mountpoint(tmp_path / "mnt")


def test_mounting_on_a_missing_mount_point_or_a_missing_image_fails_with_one_line(pyfs_mount, tmp_path):
    for image, mountpoint in [(pyfs_mount.image, tmp_path / "nowhere"), (tmp_path / "no.img", pyfs_mount.mountpoint)]:
        result = pyfs_cli("mount", image, mountpoint)
        assert result.returncode == 1
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_pyfs_umount_of_a_directory_that_is_not_a_pyfs_mount_fails_with_one_line(tmp_path):
    result = pyfs_cli("umount", tmp_path)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "not a pyfs mount" in result.stderr


def test_a_foreground_mount_serves_requests_until_fusermount_u(pyfs_mount):
    pyfs_mount.mount_foreground()
    before = populate(pyfs_mount.mountpoint)
    assert pyfs_mount.fusermount_umount() == 0
    assert image_is_clean(pyfs_mount.image) == []
    pyfs_mount.mount_foreground()
    assert tree_snapshot(pyfs_mount.mountpoint) == before
    os.kill(pyfs_mount.pid, signal.SIGTERM)
    assert pyfs_mount.wait_daemon() == 0
    assert not is_mountpoint(pyfs_mount.mountpoint)


def test_reading_a_corrupted_data_region_fails_with_eio_and_the_daemon_lives_on(pyfs_mount):
    pyfs_mount.mount()
    marker = b"MARKER-" + os.urandom(64).hex().encode()
    data = os.urandom(100 * KiB) + marker + os.urandom(100 * KiB)
    write_file(pyfs_mount / "victim", data)
    write_file(pyfs_mount / "bystander", b"unharmed " * 1000)
    assert pyfs_mount.umount() == 0
    raw = pyfs_mount.image.read_bytes()
    at = raw.find(marker)
    assert at > 0 and raw.find(marker, at + 1) == -1
    with open(pyfs_mount.image, "r+b") as f:
        f.seek(at)
        f.write(b"X")
    pyfs_mount.mount()
    raises_errno(errno.EIO, read_file, pyfs_mount / "victim")
    assert sorted(os.listdir(pyfs_mount.mountpoint)) == ["bystander", "victim"]
    assert read_file(pyfs_mount / "bystander") == b"unharmed " * 1000
    raises_errno(errno.EIO, read_file, pyfs_mount / "victim")
    assert os.stat(pyfs_mount / "victim").st_size == len(data)
    assert pyfs_mount.umount() == 0
    assert "checksum mismatch" in pyfs_mount.log.read_text()


def test_sigterm_right_after_a_background_mount_returns_still_unmounts_cleanly(pyfs_mount):
    for _ in range(2):
        pyfs_mount.mount()
        os.kill(pyfs_mount.pid, signal.SIGTERM)
        assert pyfs_mount.wait_daemon() == 0
        assert not is_mountpoint(pyfs_mount.mountpoint)
    assert image_is_clean(pyfs_mount.image) == []


def test_sigterm_as_soon_as_a_foreground_mount_appears_still_unmounts_cleanly(pyfs_mount):
    for _ in range(2):
        pyfs_mount.mount_foreground()
        os.kill(pyfs_mount.pid, signal.SIGTERM)
        assert pyfs_mount.wait_daemon() == 0
        assert not is_mountpoint(pyfs_mount.mountpoint)
    assert image_is_clean(pyfs_mount.image) == []


def test_a_daemon_killed_after_the_commit_interval_keeps_writes_to_a_file_still_open(pyfs_mount):
    # Invariant 6: without fsync a crash loses at most the commit interval.
    # (The FUSE writeback cache broke this: the data stayed in the kernel.)
    pyfs_mount.mount("--commit", "0.1")
    fd = os.open(pyfs_mount / "log.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"a line of log\n" * 1000)
        write_file(pyfs_mount / "closed", b"closed file")
        time.sleep(1.5)
        os.kill(pyfs_mount.pid, signal.SIGKILL)
        assert pyfs_mount.wait_daemon() == -signal.SIGKILL
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    subprocess.run(["fusermount3", "-u", "-z", str(pyfs_mount.mountpoint)], check=True)
    pyfs_mount.mount()
    assert read_file(pyfs_mount / "log.txt") == b"a line of log\n" * 1000
    assert read_file(pyfs_mount / "closed") == b"closed file"
    assert pyfs_mount.umount() == 0
    assert image_is_clean(pyfs_mount.image) == []


def test_writing_beyond_the_free_space_fails_with_enospc_and_the_daemon_lives_on(tmp_path):
    (tmp_path / "mnt").mkdir()
    m = PyfsMount(make_image(tmp_path / "small.img", "64M"), tmp_path / "mnt", tmp_path / "pyfs.log")
    try:
        m.mount()
        chunk = os.urandom(MiB)
        fd = os.open(m / "fill", os.O_WRONLY | os.O_CREAT, 0o644)
        with pytest.raises(OSError) as info:
            for _ in range(100):
                os.write(fd, chunk)
        assert info.value.errno == errno.ENOSPC
        os.close(fd)
        os.unlink(m / "fill")
        write_file(m / "after", chunk * 8)
        assert read_file(m / "after") == chunk * 8
        assert m.umount() == 0
    finally:
        m.cleanup()
    assert image_is_clean(m.image) == []


def test_a_mount_that_libfuse_refuses_fails_with_one_line_and_releases_the_image(pyfs_mount):
    for mode in ([], ["--foreground"]):
        result = pyfs_cli("mount", pyfs_mount.image, pyfs_mount.mountpoint, "-o", "no_such_fuse_option", *mode)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "no_such_fuse_option" in lines[0], result.stderr
    pyfs_mount.mount()
    assert pyfs_mount.umount() == 0
    assert image_is_clean(pyfs_mount.image) == []


def test_an_image_and_mount_point_with_spaces_commas_and_backslashes_in_their_paths_work(tmp_path):
    where = tmp_path / "odd dir, with\\backslash"
    (where / "mount point").mkdir(parents=True)
    m = PyfsMount(make_image(where / "pyfs, image.img"), where / "mount point", where / "pyfs.log")
    try:
        m.mount()
        write_file(m / "f", b"odd paths")
        assert m.umount() == 0  # pyfs umount finds the image behind the escaped mountinfo entry
        m.mount()
        assert read_file(m / "f") == b"odd paths"
        assert m.fusermount_umount() == 0
    finally:
        m.cleanup()
    assert image_is_clean(m.image) == []

"""mkfs.pyfs keeps the promises in pyfs/cli/mkfs.py's docstring, and the
superblock reader (pyfs/engine/superblock_io.py) copes with the damaged, foreign,
truncated and future images a user may hand it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pyfs.cli import mkfs as mkfs_cli
from pyfs.engine.device import FileDevice
from pyfs.engine.engine import Engine
from pyfs.format.errors import FormatError, NotPyfs, UnsupportedVersion
from pyfs.format.keys import encode_key
from pyfs.format.records import NEXT_INO_KEY, ROOT_INO, Inode, Tree, unpack
from pyfs.format.superblock import BLOCK_SIZE, MIN_JOURNAL_SIZE
from pyfs.cli.mkfs import find_nonzero, human_size, parse_size
from pyfs.engine.superblock_io import read_superblock

MKFS = str(Path(__file__).resolve().parent.parent / "mkfs.py")
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


def mkfs(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, MKFS, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mkfs.pyfs: ")
    return lines[0]


def superblock_of(path: Path):
    with FileDevice.open(path, read_only=True) as dev:
        return read_superblock(dev)


@pytest.fixture
def image(tmp_path) -> Path:
    """A freshly made 64 MiB image."""
    path = tmp_path / "pyfs.img"
    result = mkfs(path, "--size", "64M", "-q")
    assert result.returncode == 0, result.stderr
    return path


# -- a new image ---------------------------------------------------------------


def test_new_image_is_sparse_and_of_the_asked_size(tmp_path):
    path = tmp_path / "new.img"
    result = mkfs(path, "--size", "1G")
    assert result.returncode == 0, result.stderr
    st = path.stat()
    assert st.st_size == GiB
    assert st.st_blocks * 512 < 16 * MiB  # only metadata was written


def test_summary_names_the_geometry_with_units(tmp_path):
    path = tmp_path / "new.img"
    result = mkfs(path, "--size", "1G", "--label", "scratch")
    assert result.returncode == 0, result.stderr
    sb, _ = superblock_of(path)
    out = result.stdout
    assert str(path) in out
    assert f"{GiB} bytes (1 GiB)" in out
    assert "4096 bytes" in out
    assert f"{sb.nbuckets} of {MiB} bytes (1 MiB)" in out
    assert "16384 bytes (16 KiB)" in out
    assert f"{sb.journal_size} bytes" in out
    assert str(uuid.UUID(bytes=sb.uuid)) in out
    assert "'scratch'" in out


def test_quiet_prints_nothing(tmp_path):
    result = mkfs(tmp_path / "q.img", "--size", "64M", "-q")
    assert result.returncode == 0
    assert result.stdout == "" and result.stderr == ""


def test_new_image_holds_the_root_directory_and_the_inode_counter(image):
    eng = Engine.open(FileDevice.open(image))
    try:
        root = Inode.decode(eng.read(Tree.INODES, encode_key((ROOT_INO,))))
        assert root.mode & 0o170000 == 0o040000  # a directory
        assert root.mode & 0o7777 == 0o755
        assert root.nlink == 2
        assert root.size == 0
        assert root.generation == 1
        assert (root.uid, root.gid) == (os.getuid(), os.getgid())
        assert root.atime_ns == root.mtime_ns == root.ctime_ns > 0
        assert unpack(eng.read(Tree.MISC, encode_key(NEXT_INO_KEY))) == ROOT_INO + 1
        assert eng.replayed_entries == 0  # mkfs ended with a clean checkpoint
    finally:
        eng.close()


def test_second_open_after_close_replays_nothing(image):
    Engine.open(FileDevice.open(image)).close()
    eng = Engine.open(FileDevice.open(image))
    try:
        assert eng.replayed_entries == 0
        assert eng.notes == []
    finally:
        eng.close()


def test_label_journal_and_bucket_sizes_reach_the_superblock(tmp_path):
    path = tmp_path / "opts.img"
    result = mkfs(path, "--size", "256M", "--label", "data-01", "--journal-size", "1M",
                  "--bucket-size", "2M", "--node-size", "32K", "-q")
    assert result.returncode == 0, result.stderr
    sb, notes = superblock_of(path)
    assert notes == []
    assert sb.label == "data-01"
    assert sb.journal_size == MiB
    assert sb.bucket_size == 2 * MiB
    assert sb.node_size == 32 << 10
    assert sb.size == 256 * MiB


def test_missing_image_without_size_is_a_usage_error(tmp_path):
    result = mkfs(tmp_path / "absent.img")
    assert result.returncode == 2
    assert "--size" in result.stderr
    assert not (tmp_path / "absent.img").exists()


# -- sizes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        ("4096B", 4096),
        ("1k", 1 << 10),
        ("512M", 512 * MiB),
        ("512m", 512 * MiB),
        ("4G", 4 * GiB),
        ("1GiB", GiB),
        ("1gib", GiB),
        ("2GB", 2 * GiB),
        ("1T", TiB),
        (" 8 MiB ", 8 * MiB),
    ],
)
def test_parse_size_accepts_bytes_and_binary_suffixes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "1.5G", "-1M", "12Q", "1 2M", "4iB", "0x100", "1GiBs"])
def test_parse_size_rejects_malformed_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_human_size_uses_the_largest_binary_unit():
    assert human_size(512) == "512 bytes"
    assert human_size(16 << 10) == "16 KiB"
    assert human_size(3 * GiB // 2) == "1.5 GiB"
    assert human_size(TiB) == "1 TiB"


@pytest.mark.parametrize("bad", ["12Q", "lots", "0", "1.5G"])
def test_a_bad_size_is_a_usage_error(tmp_path, bad):
    result = mkfs(tmp_path / "x.img", "--size", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.img").exists()


def test_size_suffixes_work_on_the_command_line(tmp_path):
    path = tmp_path / "s.img"
    assert mkfs(path, "--size", "96MiB", "-q").returncode == 0
    assert path.stat().st_size == 96 * MiB


# -- existing targets ----------------------------------------------------------


def test_existing_pyfs_image_is_refused_without_force(image):
    old, _ = superblock_of(image)
    line = assert_one_line_error(mkfs(image, "-q"))
    assert "pyfs image" in line
    assert str(uuid.UUID(bytes=old.uuid)) in line
    assert "--force" in line
    assert superblock_of(image)[0] == old  # untouched


def test_refusal_names_the_label_of_the_existing_image(tmp_path):
    path = tmp_path / "l.img"
    assert mkfs(path, "--size", "64M", "--label", "holiday-photos", "-q").returncode == 0
    line = assert_one_line_error(mkfs(path))
    assert "holiday-photos" in line


def test_force_reformats_an_existing_image_with_a_new_uuid(image):
    old, _ = superblock_of(image)
    result = mkfs(image, "--force", "-q")
    assert result.returncode == 0, result.stderr
    new, _ = superblock_of(image)
    assert new.uuid != old.uuid
    eng = Engine.open(FileDevice.open(image))
    try:
        assert eng.replayed_entries == 0
        assert eng.read(Tree.INODES, encode_key((ROOT_INO,))) is not None
    finally:
        eng.close()


def test_file_with_data_is_refused(tmp_path):
    path = tmp_path / "data.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
        f.seek(5 * MiB + 123)
        f.write(b"precious")
    line = assert_one_line_error(mkfs(path))
    assert f"offset {5 * MiB + 123}" in line
    assert "--force" in line


def test_data_only_at_the_end_of_a_big_sparse_file_is_refused(tmp_path):
    path = tmp_path / "big.img"
    with open(path, "wb") as f:
        f.truncate(TiB)
        f.seek(TiB - 1)
        f.write(b"\x01")
    line = assert_one_line_error(mkfs(path))
    assert f"offset {TiB - 1}" in line


def test_a_file_of_random_bytes_is_formatted_with_force(tmp_path):
    path = tmp_path / "random.img"
    path.write_bytes(os.urandom(32 * MiB))
    assert_one_line_error(mkfs(path))
    result = mkfs(path, "--force", "-q")
    assert result.returncode == 0, result.stderr
    eng = Engine.open(FileDevice.open(path))  # old bytes in the journal region never validate
    try:
        assert eng.replayed_entries == 0
        assert eng.notes == []
    finally:
        eng.close()


def test_all_zero_existing_file_is_formatted_at_its_size(tmp_path):
    path = tmp_path / "zero.img"
    path.write_bytes(bytes(40 * MiB))  # written zeros, not a hole
    result = mkfs(path, "-q")
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size == 40 * MiB
    assert superblock_of(path)[0].size == 40 * MiB


def test_existing_sparse_file_is_formatted_at_its_size(tmp_path):
    path = tmp_path / "sparse.img"
    with open(path, "wb") as f:
        f.truncate(3 * GiB)
    assert mkfs(path, "-q").returncode == 0
    assert superblock_of(path)[0].size == 3 * GiB


def test_a_different_size_for_an_existing_file_needs_force(tmp_path):
    path = tmp_path / "resize.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    line = assert_one_line_error(mkfs(path, "--size", "128M"))
    assert "--force" in line
    assert path.stat().st_size == 64 * MiB
    result = mkfs(path, "--size", "128M", "--force", "-q")
    assert result.returncode == 0, result.stderr
    assert path.stat().st_size == 128 * MiB
    assert superblock_of(path)[0].size == 128 * MiB


def test_the_same_size_for_an_existing_file_is_fine(tmp_path):
    path = tmp_path / "same.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    assert mkfs(path, "--size", "64M", "-q").returncode == 0


def test_an_empty_existing_file_is_grown_to_the_asked_size(tmp_path):
    path = tmp_path / "empty.img"
    path.touch()
    assert mkfs(path, "--size", "64M", "-q").returncode == 0
    assert superblock_of(path)[0].size == 64 * MiB


def test_an_image_held_open_is_refused(image):
    with FileDevice.open(image):  # flock conflicts per open file description
        line = assert_one_line_error(mkfs(image, "--force"))
    assert "in use" in line
    assert str(image) in line


# -- impossible requests -------------------------------------------------------


def test_too_small_is_refused_with_the_reason_and_leaves_no_file(tmp_path):
    path = tmp_path / "tiny.img"
    line = assert_one_line_error(mkfs(path, "--size", "1M"))
    assert "too small" in line
    assert not path.exists()


def test_existing_file_too_small_is_refused(tmp_path):
    path = tmp_path / "tiny.img"
    path.write_bytes(bytes(MiB))
    line = assert_one_line_error(mkfs(path))
    assert "too small" in line


def test_journal_smaller_than_the_minimum_is_refused(tmp_path):
    line = assert_one_line_error(mkfs(tmp_path / "j.img", "--size", "64M", "--journal-size", "64K"))
    assert f"{MIN_JOURNAL_SIZE >> 10} KiB" in line


def test_bucket_size_not_a_power_of_two_is_refused(tmp_path):
    line = assert_one_line_error(mkfs(tmp_path / "b.img", "--size", "64M", "--bucket-size", "3M"))
    assert "power of two" in line


def test_node_size_below_the_block_size_is_refused(tmp_path):
    line = assert_one_line_error(mkfs(tmp_path / "n.img", "--size", "64M", "--node-size", "2K"))
    assert "block size" in line


def test_missing_directory_is_one_line_naming_the_path(tmp_path):
    path = tmp_path / "no" / "such" / "dir" / "x.img"
    line = assert_one_line_error(mkfs(path, "--size", "64M"))
    assert str(path) in line
    assert "does not exist" in line


def test_a_path_below_a_regular_file_is_one_line_naming_the_path(tmp_path):
    parent = tmp_path / "file"
    parent.write_bytes(b"")
    line = assert_one_line_error(mkfs(parent / "x.img", "--size", "64M"))
    assert str(parent / "x.img") in line


def test_a_directory_as_image_is_refused(tmp_path):
    line = assert_one_line_error(mkfs(tmp_path))
    assert "directory" in line


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs sysfs, where nobody may create files")
def test_a_directory_nobody_may_create_in_is_one_line_naming_the_path():
    path = "/sys/pyfs-mkfs-test.img"
    line = assert_one_line_error(mkfs(path, "--size", "64M"))
    assert path in line
    assert "cannot create" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_directory_is_one_line_naming_the_path(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        line = assert_one_line_error(mkfs(locked / "x.img", "--size", "64M"))
    finally:
        locked.chmod(0o700)
    assert str(locked / "x.img") in line
    assert "Permission denied" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_read_only_image_is_one_line_naming_the_path(tmp_path):
    path = tmp_path / "ro.img"
    with open(path, "wb") as f:
        f.truncate(64 * MiB)
    path.chmod(0o400)
    line = assert_one_line_error(mkfs(path))
    assert str(path) in line
    assert "Permission denied" in line


# -- the non-zero check itself ---------------------------------------------------


def _sparse_with(path: Path, size: int, writes: dict[int, bytes]) -> int:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in writes.items():
            f.seek(offset)
            f.write(data)
    return os.open(path, os.O_RDONLY)


def test_find_nonzero_reads_only_data_extents_of_a_sparse_file(tmp_path):
    fd = _sparse_with(tmp_path / "f", TiB, {GiB: bytes(MiB), 700 * GiB + 5: b"\x07"})
    try:
        check = find_nonzero(fd, TiB, is_block=False)
    finally:
        os.close(fd)
    assert check.first_nonzero == 700 * GiB + 5
    assert check.how == "all data extents"


def test_find_nonzero_finds_nothing_in_a_hole(tmp_path):
    fd = _sparse_with(tmp_path / "f", TiB, {})
    try:
        assert find_nonzero(fd, TiB, is_block=False).first_nonzero is None
    finally:
        os.close(fd)


def test_sampled_check_reads_the_first_and_last_mib(tmp_path):
    # How block devices are checked: SEEK_DATA would call all of them data.
    for offset in (100, GiB - 10, (64 << 20) + 1):
        path = tmp_path / f"f{offset}"
        fd = _sparse_with(path, GiB, {offset: b"\x01"})
        try:
            check = find_nonzero(fd, GiB, is_block=True)
        finally:
            os.close(fd)
        assert check.first_nonzero == offset
        assert check.how.startswith("first and last MiB")


def test_lots_of_data_is_sampled_within_the_data_extents(tmp_path, monkeypatch):
    monkeypatch.setattr(mkfs_cli, "_FULL_READ_LIMIT", 0)
    fd = _sparse_with(tmp_path / "f", TiB, {TiB - 3: b"\x02"})
    try:
        check = find_nonzero(fd, TiB, is_block=False)
    finally:
        os.close(fd)
    assert check.first_nonzero == TiB - 3
    assert check.how.startswith("first and last MiB")


# -- reading the superblock of damaged and foreign images ------------------------


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_corrupt_primary_falls_back_to_the_backup_and_says_so(image):
    good, _ = superblock_of(image)
    _overwrite(image, 40, b"\xff" * 16)  # inside the checksummed body
    sb, notes = superblock_of(image)
    assert sb == good
    assert len(notes) == 1
    assert "backup" in notes[0] and "primary" in notes[0]


def test_an_image_with_a_corrupt_primary_still_opens(image):
    _overwrite(image, 40, b"\xff" * 16)
    eng = Engine.open(FileDevice.open(image, read_only=True))
    try:
        assert any("backup" in note for note in eng.notes)
        assert eng.read(Tree.INODES, encode_key((ROOT_INO,))) is not None
    finally:
        eng.close()


def test_both_copies_corrupt_is_an_unusable_image(image):
    size = image.stat().st_size
    _overwrite(image, 40, b"\xff" * 16)
    _overwrite(image, size - BLOCK_SIZE + 40, b"\xff" * 16)
    with pytest.raises(FormatError, match="unusable") as info:
        superblock_of(image)
    assert not isinstance(info.value, NotPyfs)


def test_both_copies_wiped_is_not_a_pyfs_image(image):
    size = image.stat().st_size
    _overwrite(image, 0, bytes(BLOCK_SIZE))
    _overwrite(image, size - BLOCK_SIZE, bytes(BLOCK_SIZE))
    with pytest.raises(NotPyfs, match="not a pyfs image"):
        superblock_of(image)


def test_a_random_file_is_not_pyfs(tmp_path):
    path = tmp_path / "random"
    path.write_bytes(os.urandom(MiB))
    with pytest.raises(NotPyfs):
        superblock_of(path)


def test_a_tiny_file_is_not_pyfs(tmp_path):
    path = tmp_path / "tiny"
    path.write_bytes(b"hello")
    with pytest.raises(NotPyfs):
        superblock_of(path)


def test_a_truncated_image_says_truncated(image):
    size = image.stat().st_size
    os.truncate(image, size - 8 * MiB)
    with pytest.raises(FormatError, match="truncated"):
        superblock_of(image)


def test_a_future_format_version_is_refused_by_number(image):
    sb, _ = superblock_of(image)
    _overwrite(image, 0, dataclasses.replace(sb, version=99).encode())
    with pytest.raises(UnsupportedVersion, match="unsupported format version 99"):
        superblock_of(image)


def test_mkfs_refuses_an_image_of_a_future_version(image):
    sb, _ = superblock_of(image)
    _overwrite(image, 0, dataclasses.replace(sb, version=99).encode())
    line = assert_one_line_error(mkfs(image))
    assert "pyfs image" in line and "version 99" in line

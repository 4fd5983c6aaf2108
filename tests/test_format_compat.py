"""Images made by earlier versions of pyfs keep mounting and checking clean.

`tests/data/v1-image.img.gz` is a 16 MiB image made by mkfs.py and filled
through a real mount with the code of 2026-11-21 (format version 1, before
the layer packages): directories, a 330,000-byte file in regions, small
inline files, a hard link, a symlink, a fifo and an xattr; then unmounted
cleanly.  `v1-image.manifest` lists what `find -printf '%p %y %m %s %n'`
and `sha256sum` showed on that mount.  A change that alters how pyfs reads
the format fails here.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pyfs.engine.device import FileDevice
from pyfs.format.records import ROOT_INO
from pyfs.fs import FileSystem

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parent.parent
TYPES = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFIFO: "p"}


@pytest.fixture
def v1_image(tmp_path: Path) -> Path:
    image = tmp_path / "v1.img"
    with gzip.open(DATA / "v1-image.img.gz", "rb") as src, open(image, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return image


def read(fs: FileSystem, ino: int) -> bytes:
    fh = fs.open(ino, 0)
    try:
        return fs.read(fh, 0, fs.getattr(ino).size + 1)
    finally:
        fs.release(fh)


def manifest(fs: FileSystem) -> list[str]:
    """What `find . -printf '%p %y %m %s %n' | sort` and `sha256sum` showed, built through the core."""
    lines = []
    todo = [(".", ROOT_INO)]
    files: dict[str, int] = {}
    while todo:
        path, ino = todo.pop()
        attr = fs.getattr(ino)
        kind = TYPES[stat.S_IFMT(attr.mode)]
        size = attr.size if kind != "d" else 0
        lines.append(f"{path} {kind} {stat.S_IMODE(attr.mode):o} {size} {attr.nlink}")
        if kind == "d":
            for name, child, _ in fs.readdir(ino):
                if name not in (b".", b".."):
                    todo.append((f"{path}/{name.decode()}", child.ino))
        elif kind == "f":
            files[path[2:]] = ino
    lines.sort()
    for name in ("dir/big.bin", "dir/small.txt"):
        lines.append(f"{hashlib.sha256(read(fs, files[name])).hexdigest()}  {name}")
    return lines


def fsck(image: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "fsck.py"), "-n", "-f", str(image)],
                          capture_output=True, text=True, timeout=120)


def test_a_version_1_image_shows_every_file_as_it_was_made(v1_image):
    fs = FileSystem.mount(FileDevice.open(v1_image, read_only=True))
    try:
        assert manifest(fs) == (DATA / "v1-image.manifest").read_text().splitlines()
        small = fs.lookup(fs.lookup(ROOT_INO, b"dir").ino, b"small.txt").ino
        assert fs.getxattr(small, b"user.k") == b"value"
        assert fs.readlink(fs.lookup(fs.lookup(ROOT_INO, b"dir").ino, b"link").ino) == b"small.txt"
    finally:
        fs.close()


def test_a_version_1_image_checks_clean_and_stays_clean_after_changes(v1_image):
    result = fsck(v1_image)
    assert result.returncode == 0, result.stdout + result.stderr
    fs = FileSystem.mount(FileDevice.open(v1_image))
    d = fs.lookup(ROOT_INO, b"dir").ino
    fh, attr = fs.create(d, b"new", 0o644)
    fs.write(fh, 0, b"written after the change" * 1000)
    fs.release(fh)
    fs.unlink(d, b"big.bin")
    fs.rename(d, b"small.txt", ROOT_INO, b"moved.txt")
    fs.close()
    result = fsck(v1_image)
    assert result.returncode == 0, result.stdout + result.stderr

"""Inspection of an unmounted image (pyfs/cli/inspect_commands.py): show-super, dump, ls, cat.

Each command reads what the filesystem wrote, agrees with what the
filesystem itself shows, and leaves the image's bytes unchanged.
"""

from __future__ import annotations

import hashlib
import json
import stat

from conftest import make_image, pyfs_cli

from pyfs.engine.device import FileDevice
from pyfs.format.records import ROOT_INO
from pyfs.fs import FileSystem

PAYLOAD = b"hello from an unmounted image\n" * 300


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def populated(tmp_path):
    img = make_image(tmp_path / "img", "64M")
    dev = FileDevice.open(img)
    fs = FileSystem.mount(dev)
    d = fs.mkdir(ROOT_INO, b"docs", 0o755)
    fh, attr = fs.create(d.ino, b"note.txt", 0o644)
    fs.write(fh, 0, PAYLOAD)
    fs.release(fh)
    fs.setxattr(attr.ino, b"user.color", b"blue")
    fs.close()
    dev.close()
    return img, d.ino, attr.ino


def test_inspection_reads_every_tree_and_changes_no_byte(tmp_path):
    img, dir_ino, file_ino = populated(tmp_path)
    before = digest(img)

    sup = pyfs_cli("show-super", img, "--json")
    assert sup.returncode == 0, sup.stderr
    fields = json.loads(sup.stdout)
    assert fields["size"] == img.stat().st_size
    assert fields["copies"]["backup"] == fields["size"] - fields["block_size"]

    trees = {}
    for tree in ("inodes", "dirents", "extents", "xattrs", "alloc", "logged"):
        r = pyfs_cli("dump", img, "--tree", tree, "--json")
        assert r.returncode == 0, r.stderr
        trees[tree] = json.loads(r.stdout)["keys"]
    inode_keys = [row["key"] for row in trees["inodes"]]
    assert [ROOT_INO] in inode_keys and [dir_ino] in inode_keys and [file_ino] in inode_keys
    assert any("note.txt" in json.dumps(row) for row in trees["dirents"])
    assert any(row["key"][0] == file_ino for row in trees["extents"])
    assert any("user.color" in json.dumps(row) and "blue" in json.dumps(row) for row in trees["xattrs"])
    assert trees["alloc"]
    assert trees["logged"] == []  # a clean close leaves no logged operation

    journal = pyfs_cli("list-journal", img, "--keys", "--json")
    assert journal.returncode == 0, journal.stderr
    entries = json.loads(journal.stdout)
    assert entries[0]["checkpoint"] and entries[0]["offset"] >= fields["journal_offset"]
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert all(sum(e["keys_per_tree"].values()) == len(e["keys"]) for e in entries)

    later = pyfs_cli("dump", img, "--tree", "inodes", "--from", str(dir_ino), "--json")
    assert [row["key"] for row in json.loads(later.stdout)["keys"]] == [k for k in inode_keys if k >= [dir_ino]]

    ls = pyfs_cli("ls", img, "/docs", "--json")
    assert ls.returncode == 0, ls.stderr
    (entry,) = json.loads(ls.stdout)
    assert entry["name"] == "note.txt" and entry["ino"] == file_ino and entry["size"] == len(PAYLOAD)
    assert stat.S_ISREG(entry["mode"])

    cat = pyfs_cli("cat", img, "docs/note.txt")
    assert cat.returncode == 0, cat.stderr
    assert cat.stdout.encode() == PAYLOAD

    assert digest(img) == before


def test_inspection_refuses_a_missing_path_and_a_busy_image_in_one_line(tmp_path):
    img, _, _ = populated(tmp_path)
    r = pyfs_cli("cat", img, "docs/absent")
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    dev = FileDevice.open(img)  # what a mount holds
    try:
        r = pyfs_cli("show-super", img)
    finally:
        dev.close()
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
    missing = pyfs_cli("dump", tmp_path / "nope", "--tree", "inodes")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "nope" in missing.stderr

"""Looking inside an unmounted image: show-super, list-journal, dump, ls, cat (issue 15).

    pyfs show-super IMAGE [--json]
    pyfs list-journal IMAGE [--keys] [--json]
    pyfs dump IMAGE --tree inodes|dirents|extents|xattrs|alloc|logged [--from KEY] [--json]
    pyfs ls IMAGE PATH [--json]
    pyfs cat IMAGE PATH

Promises (tests/test_inspect.py):
- Read-only: the image is opened read-only under a shared lock and the
  engine is opened read-only (replay in memory, no checkpoint), so the
  image's bytes are the same afterwards.  A mounted image (exclusive lock)
  is refused with one line.
- `dump` prints the keys of one btree in key order, each with its decoded
  key tuple and decoded value; `--from KEY` starts at the first key not
  below KEY (comma-separated integers, e.g. `--from 5` or `--from 1,7`).
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..engine.device import FileDevice
from ..engine.engine import Engine, EngineOptions
from ..format.journal_entry import decode_entry
from ..format.keys import decode_key, encode_key
from ..format.records import ROOT_INO, Tree, unpack
from ..fs import FileSystem

TREES = {
    "inodes": Tree.INODES,
    "dirents": Tree.DIRENTS,
    "extents": Tree.EXTENTS,
    "xattrs": Tree.XATTRS,
    "alloc": Tree.ALLOC,
    "misc": Tree.MISC,
    "logged": Tree.LOGGED_OPS,
}


@contextmanager
def read_only_engine(image: str) -> Iterator[Engine]:
    """The image's engine, replayed in memory; nothing is written."""
    dev = FileDevice.open(image, read_only=True)
    try:
        eng = Engine.open(dev, EngineOptions(read_only=True))
        yield eng
    finally:
        dev.close()


def plain(value: object) -> object:
    """A decoded value in JSON terms: bytes as text when they are UTF-8, else hex."""
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return {"hex": value.hex()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(plain(k)): plain(v) for k, v in value.items()}
    return value


def emit(args: argparse.Namespace, data: object, lines: Callable[[], list[str]]) -> int:
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for line in lines():
            print(line)
    return 0


def cmd_show_super(args: argparse.Namespace) -> int:
    with read_only_engine(args.image) as eng:
        sb = eng.sb
        data = {
            "image": args.image,
            "uuid": sb.uuid.hex(),
            "label": sb.label,
            "version": sb.version,
            "size": sb.size,
            "block_size": sb.block_size,
            "bucket_size": sb.bucket_size,
            "node_size": sb.node_size,
            "journal_offset": sb.journal_offset,
            "journal_size": sb.journal_size,
            "bucket_offset": sb.bucket_offset,
            "nbuckets": sb.nbuckets,
            "created_ns": sb.created_ns,
            "copies": {"primary": 0, "backup": sb.backup_offset},
        }
    return emit(args, data, lambda: [f"{k}: {v}" for k, v in data.items()])


def parse_from(text: str | None) -> bytes:
    if not text:
        return b""
    try:
        return encode_key(tuple(int(p) for p in text.split(",")))
    except ValueError:
        raise ValueError(f"--from {text!r}: expected comma-separated integers") from None


def decoded(tree: int, raw: bytes) -> object:
    """A value record as its msgpack list; xattr values are the raw bytes."""
    if tree == Tree.XATTRS:
        return raw
    try:
        return unpack(raw)
    except ValueError:
        return raw


def cmd_dump(args: argparse.Namespace) -> int:
    tree = TREES[args.tree]
    start = parse_from(args.start)
    with read_only_engine(args.image) as eng:
        rows = [{"key": plain(list(decode_key(k))), "value": plain(decoded(tree, v))}
                for k, v in eng.scan(tree, start, None, False)]
    return emit(args, {"tree": args.tree, "keys": rows},
                lambda: [f"{r['key']} {json.dumps(r['value'])}" for r in rows])


def cmd_list_journal(args: argparse.Namespace) -> int:
    with read_only_engine(args.image) as eng:
        scan = eng.journal_scan
        assert scan is not None
        region = eng.device.pread(eng.sb.journal_offset, eng.sb.journal_size)
        rows = []
        for loc in scan.chain:
            found = decode_entry(region, loc.offset, eng.seed)
            if found is None:
                raise ValueError(f"journal entry {loc.entry.seq} changed while it was being read")
            keys = found[0].keys or []
            per_tree: dict[str, int] = {}
            for tree, _, _ in keys:
                name = Tree(tree).name.lower()
                per_tree[name] = per_tree.get(name, 0) + 1
            row: dict[str, object] = {"seq": loc.entry.seq, "offset": eng.sb.journal_offset + loc.offset,
                                      "size": loc.length, "checkpoint": loc.entry.is_checkpoint,
                                      "keys_per_tree": per_tree}
            if args.keys:
                row["keys"] = [{"tree": Tree(t).name.lower(), "key": plain(list(decode_key(k))),
                                "value": None if v is None else plain(decoded(t, v))} for t, k, v in keys]
            rows.append(row)

    def lines() -> list[str]:
        out = []
        for r in rows:
            out.append(f"seq {r['seq']} offset {r['offset']} size {r['size']}"
                       f"{' checkpoint' if r['checkpoint'] else ''} {r['keys_per_tree']}")
            out.extend(f"  {k['tree']} {k['key']} {json.dumps(k['value'])}" for k in r.get("keys", []))
        return out
    return emit(args, rows, lines)


def walk(fs: FileSystem, path: str) -> int:
    ino = ROOT_INO
    for part in (p for p in path.split("/") if p):
        ino = fs.lookup(ino, part.encode()).ino
    return ino


def cmd_ls(args: argparse.Namespace) -> int:
    with read_only_engine(args.image) as eng:
        fs = FileSystem(eng)
        ino = walk(fs, args.path)
        if not stat.S_ISDIR(fs.getattr(ino).mode):
            raise NotADirectoryError(20, "not a directory", args.path)
        rows = [{"name": plain(name), "ino": a.ino, "mode": a.mode, "size": a.size, "nlink": a.nlink}
                for name, a, _ in fs.readdir(ino) if name not in (b".", b"..")]
    return emit(args, rows, lambda: [f"{r['ino']:>8} {stat.filemode(r['mode'])} {r['size']:>12} {r['name']}"
                                     for r in rows])


def cmd_cat(args: argparse.Namespace) -> int:
    with read_only_engine(args.image) as eng:
        fs = FileSystem(eng)
        ino = walk(fs, args.path)
        attr = fs.getattr(ino)
        if stat.S_ISDIR(attr.mode):
            raise IsADirectoryError(21, "is a directory", args.path)
        fh = fs.open(ino)
        offset, chunk = 0, 1 << 20
        while offset < attr.size:
            data = fs.read(fh, offset, min(chunk, attr.size - offset))
            if not data:
                break
            sys.stdout.buffer.write(data)
            offset += len(data)
        sys.stdout.buffer.flush()
        fs.release(fh)
    return 0


def add_commands(add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the inspection subcommands on the `pyfs` parser."""
    p = add_parser("show-super", help="superblock of an unmounted image")
    p.add_argument("image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_show_super)
    p = add_parser("list-journal", help="journal entries from the newest checkpoint on")
    p.add_argument("image")
    p.add_argument("--keys", action="store_true", help="also the keys of each entry")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list_journal)
    p = add_parser("dump", help="keys and decoded values of one btree of an unmounted image")
    p.add_argument("image")
    p.add_argument("--tree", required=True, choices=sorted(TREES))
    p.add_argument("--from", dest="start", metavar="KEY")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_dump)
    p = add_parser("ls", help="list a directory of an unmounted image")
    p.add_argument("image")
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)
    p = add_parser("cat", help="print a file of an unmounted image")
    p.add_argument("image")
    p.add_argument("path")
    p.set_defaults(func=cmd_cat)

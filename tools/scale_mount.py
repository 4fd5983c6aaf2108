#!/usr/bin/env python3
"""Measure mount time against the number of files and the entries written since the last checkpoint.

Builds an image of --files files (default 200,000, in directories of
1,000) in process, through `FileSystem`, flushing every 1,000 creates as a
mount's commit interval would; the journal (1/32 of the image, 64 MiB at
most) wraps many times.  Then it measures `FileSystem.mount` (engine open,
replay, the checkpoint after a replay, recovery) on the image file:

  clean       after a clean close (format v2: the checkpoint slot names the
              checkpoint; nothing is replayed)
  crash N     after N more creates (each its own journal entry) flushed and
              then a crash (the device closed without a checkpoint), for
              each N of --entries (default 1,000 and 10,000)

Every mount is checked: the file count seen by the engine equals what was
created, and a crash mount replays at least N entries.  --format 1 builds a
version-1 image instead (whose mount scans the whole journal region).

    python tools/scale_mount.py                      # 200,000 files
    python tools/scale_mount.py --files 20000 --entries 100 --json

Exit codes: 0 every mount ran and checked, 1 a check failed (one line on
stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyfs.engine.device import FileDevice  # noqa: E402
from pyfs.engine.engine import Engine  # noqa: E402
from pyfs.format.records import ROOT_INO, Tree  # noqa: E402
from pyfs.format.superblock import plan_geometry  # noqa: E402
from pyfs.fs import FileSystem, format_filesystem  # noqa: E402
from tools.common import (  # noqa: E402
    GIB, CheckFailed, Stopwatch, ToolError, check, default_workdir_parent, scratch_dir, sparse_file, table_lines,
)

PER_DIR = 1000


def build(path: str, size: int, files: int, version: int) -> dict:
    """A fresh image holding `files` empty files; returns the build figures."""
    sparse_file(path, size)
    device = FileDevice.open(path)
    engine = Engine.format(device, plan_geometry(size, uuid=os.urandom(16), version=version))
    format_filesystem(engine)
    fs = FileSystem(engine)
    with Stopwatch() as sw:
        create_files(fs, "d", files)
    journal_laps = engine.journal.tail_vpos / engine.sb.journal_size
    checkpoints = engine.checkpoints
    fs.close()
    return {"files": files, "build_seconds": sw.seconds, "journal_mib": engine.sb.journal_size / 2**20,
            "journal_laps": journal_laps, "checkpoints": checkpoints}


def create_files(fs: FileSystem, prefix: str, count: int) -> None:
    directory = None
    for i in range(count):
        if i % PER_DIR == 0:
            directory = fs.mkdir(ROOT_INO, f"{prefix}{i // PER_DIR:05d}".encode(), 0o755).ino
            fs.flush()
        assert directory is not None
        fs.mknod(directory, f"f{i:07d}".encode(), stat.S_IFREG | 0o644)


def timed_mount(path: str) -> tuple[FileSystem, float]:
    t0 = time.perf_counter()
    fs = FileSystem.mount(FileDevice.open(path))
    return fs, time.perf_counter() - t0


def measure(path: str, files: int, entries: list[int]) -> list[dict]:
    rows = []
    fs, seconds = timed_mount(path)
    expected = fs.engine.trees[Tree.INODES].nkeys
    check(fs.engine.replayed_entries == 0, "a clean mount replayed entries")
    check(expected >= files, f"clean mount sees {expected} inodes, fewer than the {files} files made")
    rows.append({"case": "clean", "entries_since_checkpoint": 0, "mount_ms": 1000 * seconds,
                 "replayed": fs.engine.replayed_entries})
    fs.close()
    for n in entries:
        fs, _ = timed_mount(path)
        before = fs.engine.trees[Tree.INODES].nkeys
        fs.engine.checkpoint()
        create_files(fs, f"crash{n}-", n)
        fs.flush()
        made = fs.engine.trees[Tree.INODES].nkeys
        fs.engine.device.close()  # a crash: no final checkpoint
        fs.engine.closed = True
        fs, seconds = timed_mount(path)
        seen = fs.engine.trees[Tree.INODES].nkeys
        check(seen == made, f"crash {n}: {seen} inodes after the crash mount, {made} were flushed")
        check(fs.engine.replayed_entries >= n, f"crash {n}: replayed only {fs.engine.replayed_entries} entries")
        check(made - before >= n, f"crash {n}: only {made - before} inodes made")
        rows.append({"case": f"crash {n}", "entries_since_checkpoint": fs.engine.replayed_entries,
                     "mount_ms": 1000 * seconds, "replayed": fs.engine.replayed_entries})
        fs.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=200_000, help="files in the image (default 200,000)")
    parser.add_argument("--entries", type=int, nargs="*", default=[1000, 10_000],
                        help="entries written since the checkpoint before each crash (default 1000 10000)")
    parser.add_argument("--image-size", type=int, default=2 * GIB, help="bytes of the image (default 2 GiB)")
    parser.add_argument("--format", type=int, choices=(1, 2), default=2, help="format version (default 2)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--dir", help="where to put the image (default: a temp dir on the same disk)")
    args = parser.parse_args(argv)
    if args.files < 1 or any(n < 0 for n in args.entries):
        parser.error("--files must be positive and --entries not negative")
    try:
        with scratch_dir("pyfs-scale-mount-", args.dir or default_workdir_parent()) as workdir:
            path = os.path.join(workdir, "scale.img")
            built = build(path, args.image_size, args.files, args.format)
            rows = measure(path, args.files, args.entries)
    except (CheckFailed, ToolError, OSError) as exc:
        print(f"scale_mount: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"format": args.format, "build": built, "mounts": rows}, indent=2))
        return 0
    print(f"format v{args.format}: {built['files']} files built in {built['build_seconds']:.1f} s; "
          f"journal {built['journal_mib']:.0f} MiB written {built['journal_laps']:.1f} times over, "
          f"{built['checkpoints']} checkpoints")
    table = [["mount after", "entries since checkpoint", "mount ms"]]
    table += [[r["case"], str(r["entries_since_checkpoint"]), f"{r['mount_ms']:.1f}"] for r in rows]
    print("\n".join(table_lines(table, right={1, 2}, rule=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

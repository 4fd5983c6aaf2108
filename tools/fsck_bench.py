#!/usr/bin/env python3
"""How long fsck takes on a big image: the README's figure.

Makes an image with mkfs's defaults (1 MiB buckets, 16 KiB nodes), fills it
through `FileSystem` directly (no FUSE) with `--files` files in directories
of 1,000 (each file 200 bytes, inline; every 100th 64 KiB in a data region),
closes it cleanly, then times `fsck.py` as a user runs it (a subprocess on
the image file):

- `-n` (quick check of a clean image),
- `-n -f` (full check),
- `-n -f --verify-data` (full check reading every data region),
- `-y -f` after a crash (the last 1,000 files created but not closed:
  replay, recovery and a clean checkpoint are written).

Each figure gives wall seconds and the fsck process's peak RSS.

    python tools/fsck_bench.py [--files 100000] [--json] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyfs.engine.device import FileDevice  # noqa: E402
from pyfs.format.records import ROOT_INO  # noqa: E402
from pyfs.fs import FileSystem  # noqa: E402
from tools.common import FSCK_PY, mkfs, run_child, scratch_dir  # noqa: E402

PER_DIR = 1000


def fill(image: str, files: int, crash_tail: int) -> dict:
    """Create `files` files; the last `crash_tail` ones are left to replay (no clean close)."""
    start = time.monotonic()
    device = FileDevice.open(image)
    fs = FileSystem.mount(device)
    small = b"x" * 200
    big = os.urandom(64 << 10)
    dirs = []
    for i in range(files):
        if i % PER_DIR == 0:
            dirs.append(fs.mkdir(ROOT_INO, b"d%04d" % (i // PER_DIR), 0o755).ino)
        if i == files - crash_tail:
            fs.close()  # a clean checkpoint; what follows is only in the journal
            device = FileDevice.open(image)
            fs = FileSystem.mount(device)
        fh, _ = fs.create(dirs[-1], b"file-%06d" % i, 0o644)
        fs.write(fh, 0, big if i % 100 == 0 else small)
        fs.release(fh)
    fs.flush()
    device.close()  # a power cut: no final checkpoint
    return {"files": files, "directories": len(dirs), "seconds": round(time.monotonic() - start, 1)}


def time_fsck(image: str, *args: str) -> dict:
    """fsck.py as a user runs it: wall seconds and the process's own peak RSS."""
    proc = run_child([sys.executable, FSCK_PY, *args, "--json", image])
    if proc.returncode not in (0, 1):
        raise SystemExit(f"fsck {' '.join(args)} exited {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout)
    return {
        "args": " ".join(args),
        "seconds": round(proc.seconds, 2),
        "exit_code": proc.returncode,
        "peak_rss_mib": round(proc.peak_rss_mib, 1),
        "problems": report["summary"]["problems"],
        "files_checked": report["summary"].get("files"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time fsck on an image holding many files.")
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--size", default="4G", help="image size (sparse)")
    parser.add_argument("--dir", default=None, help="where to put the image (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the image")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with scratch_dir("fsck-bench-", args.dir, keep=lambda work: args.keep) as work:
        image = os.path.join(work, "bench.img")
        mkfs(image, args.size)
        made = fill(image, args.files, crash_tail=min(1000, args.files // 10))
        figures = {"crash_y": time_fsck(image, "-y", "-f")}  # first: it replays and closes cleanly
        figures["quick_n"] = time_fsck(image, "-n")
        figures["full_n"] = time_fsck(image, "-n", "-f")
        figures["full_n_verify_data"] = time_fsck(image, "-n", "-f", "--verify-data")
        result = {"image": {"size": args.size, **made, "bytes": os.stat(image).st_blocks * 512}, "figures": figures}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"image: {made['files']} files in {made['directories']} directories, "
              f"{result['image']['bytes'] / 2**20:.0f} MiB on disk (filled in {made['seconds']} s)")
        for name, f in figures.items():
            print(f"  fsck {f['args']:<22} {f['seconds']:7.2f} s   peak RSS {f['peak_rss_mib']:6.1f} MiB"
                  f"   exit {f['exit_code']}  ({f['files_checked']} files checked)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

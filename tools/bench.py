#!/usr/bin/env python3
"""Measure a mounted filesystem with everyday workloads, and compare pyfs with fuse2fs and the host.

    python tools/bench.py run MOUNTPOINT [--json] [--scale S] [--quick]
    python tools/bench.py compare [--rounds N] [--json] [--scale S] [--quick]
                                  [--systems pyfs,fuse2fs,host] [--keep-order]
    python tools/bench.py longop [--json] [--scale S] [--quick]

`run` works on any directory (a mount point or a plain directory): it makes
a fresh `pyfs-bench-*` directory inside it, runs every workload there and
removes it when every workload has passed.  Figures (all higher-is-better):

  seq_write      MiB/s      one 256 MiB file written in 1 MiB writes, fsync
                            at the end (inside the timing)
  seq_read       MiB/s      the same file read back cold, 1 MiB reads
  rand_write_fsync pairs/s  4 KiB pwrite at a random 4 KiB-aligned offset of
                            a 64 MiB file, each followed by fsync (1,000 pairs)
  create         ops/s      5,000 empty files created (open O_CREAT|O_EXCL, close)
  stat           ops/s      each of them stat'ed cold, in a scrambled order
  readdir        entries/s  the 5,000-entry directory listed 3 times
  rename         ops/s      each file renamed within its directory
  unlink         ops/s      each file unlinked
  small_write    files/s    2,000 files of 1-16 KiB written (no fsync)
  small_read     files/s    read back cold
  tar_extract    files/s    `tar -xf` of the Python standard library
                            (~2,400 files, ~55 MB, uncompressed tar; built once
                            in /tmp/pyfs-bench-cache outside the timing)

Every workload checks its own result (file contents byte for byte against
what was written, counts and names of directory entries, the content hash of
every extracted file) and the run fails loudly (exit 1, one line saying
what was wrong) if anything differs.

"Cold" means the page cache was dropped first (`os.sync()` then
`echo 3 > /proc/sys/vm/drop_caches`, which also evicts dentries and
inodes).  When drop_caches cannot be written (not root), the sequential
read uses O_DIRECT (or, if that is refused, posix_fadvise DONTNEED) and the
other reads run warm; the output says which method was used.

--scale S multiplies every size and count (not the tarball); --quick is a
smoke run with small sizes and a ~300-file tarball.

`compare` runs the same workloads, in child processes, on pyfs (a fresh
2 GiB sparse image made with mkfs.py and mounted with `python -m pyfs mount`),
on fuse2fs (a fresh 2 GiB sparse image made with `mkfs.ext4 -F -q`, served by
`fuse2fs IMG MNT -f` in the background, unmounted with `fusermount3 -u`) and
on a plain directory under /tmp, each in a fresh temp dir per round.  The
order of the three alternates between rounds (forward, then reversed) so
none always runs first.  It prints the median of each figure over the rounds
and the ratios pyfs/fuse2fs and pyfs/host; since every figure is
higher-is-better, a ratio below 1 means pyfs is slower.  The Debian packages
fuse2fs and e2fsprogs are installed with apt-get when missing (as root).

`longop` answers "while a 1 GiB collapse runs, do stat and small reads of
other files keep answering?": on a fresh pyfs mount (3 GiB sparse image) it
writes a 1 GiB file (real extents, 1 MiB writes, fsync), 4,000 small files
and a 64 MiB probe file, then measures the latency of `os.stat` of a small
file and of a 4 KiB `pread` of the probe file, one pair every 5 ms, in
three phases: with nothing else running ("idle", 1,000 pairs); while
`pyfs.client` collapses 1 MiB + 4 KiB at 4 MiB and inserts it back, 8
times ("shift": each operation moves every extent after the range, the
most steps a range of the file can cost); and while one collapse removes
all but the first and last 64 MiB ("collapse_most": the extents are
dropped).  Both probes are cold (caches dropped before each phase, each
file stat'ed once, each probe block read once with POSIX_FADV_RANDOM), so
every sample is a request the daemon answers.  It prints p50, p99 and max
of each (ms) per phase and how long the operations took, and checks the
big file's size and content (holes included) at the end.  --quick: 64 MiB.

Exit codes: 0 every workload ran and checked, 1 a workload or a mount
failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import mmap
import os
import platform
import random
import shutil
import stat
import statistics
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tools.common import (  # noqa: E402
    GIB, KIB, MIB, REPO, Stopwatch, ToolError, fusermount, is_mountpoint, mkfs, run_child, run_quiet,
    scratch_dir, sparse_file, table_lines, wait_mounted,
)

BLOCK = 4 * KIB
CACHE_DIR = os.path.join(tempfile.gettempdir(),
                         "pyfs-bench-cache" if os.geteuid() == 0 else f"pyfs-bench-cache-{os.geteuid()}")
TARBALL_FORMAT_VERSION = 1

# name, unit, what it measures (the order of the report)
FIGURES: list[tuple[str, str, str]] = [
    ("seq_write", "MiB/s", "sequential write + final fsync"),
    ("seq_read", "MiB/s", "sequential read, cold"),
    ("rand_write_fsync", "pairs/s", "4 KiB random pwrite + fsync"),
    ("create", "ops/s", "create empty file"),
    ("stat", "ops/s", "stat, cold, scrambled order"),
    ("readdir", "entries/s", "list a big directory"),
    ("rename", "ops/s", "rename within a directory"),
    ("unlink", "ops/s", "unlink"),
    ("small_write", "files/s", "write 1-16 KiB files"),
    ("small_read", "files/s", "read 1-16 KiB files, cold"),
    ("tar_extract", "files/s", "tar -xf of the Python stdlib"),
]
FIGURE_NAMES = [name for name, _, _ in FIGURES]
UNITS = {name: unit for name, unit, _ in FIGURES}
SYSTEMS = ("pyfs", "fuse2fs", "host")


class BenchError(ToolError):
    """A workload produced a wrong result, or a filesystem could not be set up."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# sizes


@dataclass(frozen=True)
class Sizes:
    seq_bytes: int
    rand_file_bytes: int
    rand_pairs: int
    meta_files: int
    readdir_passes: int
    small_files: int
    tarball: str  # "full" or "quick"

    @classmethod
    def make(cls, scale: float, quick: bool) -> Sizes:
        if scale <= 0:
            raise ValueError("--scale must be positive")
        if quick:
            base = dict(seq=16 * MIB, rand_file=4 * MIB, rand_pairs=100, meta=500, small=200)
        else:
            base = dict(seq=256 * MIB, rand_file=64 * MIB, rand_pairs=1000, meta=5000, small=2000)
        return cls(
            seq_bytes=max(1, round(base["seq"] * scale / MIB)) * MIB,
            rand_file_bytes=max(1, round(base["rand_file"] * scale / MIB)) * MIB,
            rand_pairs=max(10, round(base["rand_pairs"] * scale)),
            meta_files=max(10, round(base["meta"] * scale)),
            readdir_passes=3,
            small_files=max(10, round(base["small"] * scale)),
            tarball="quick" if quick else "full",
        )


# --------------------------------------------------------------------------
# page cache control


class Cache:
    """How this run makes reads cold: drop_caches if allowed, else O_DIRECT / fadvise for big reads."""

    def __init__(self, allow_drop: bool = True) -> None:
        self.method = "drop_caches"
        if not allow_drop:
            self.method = "none"
            return
        try:
            self._drop()
        except OSError:
            self.method = "none"

    @staticmethod
    def _drop() -> None:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")

    def drop(self) -> None:
        """Empty the page, dentry and inode caches (no-op when not allowed)."""
        if self.method == "drop_caches":
            self._drop()

    @property
    def cold(self) -> bool:
        return self.method == "drop_caches"


# --------------------------------------------------------------------------
# data patterns: every byte derived from (seed, position), so reads can be checked


class Pattern:
    """Incompressible chunks, each stamped with its index so misplaced chunks are caught."""

    def __init__(self, seed: int, chunk: int, variants: int = 8) -> None:
        rng = random.Random(seed)
        self.chunk_size = chunk
        self.bases = [rng.randbytes(chunk) for _ in range(variants)]

    def chunk(self, i: int) -> bytearray:
        b = bytearray(self.bases[i % len(self.bases)])
        stamp = struct.pack("<QQ", i, 0x5059465342454E43)  # "PYFSBENC"
        b[: len(stamp)] = stamp
        if len(b) >= 2 * BLOCK:  # also stamp the last block, so a shuffled tail shows
            b[-len(stamp):] = stamp
        return b


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise BenchError(f"write returned {n}")
        view = view[n:]


def write_new_file(path: str, chunks: Iterable[bytes | bytearray], fsync: bool = False) -> None:
    """Create `path` (it must not exist) and write `chunks` to it, then fsync if asked, and close."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in chunks:
            write_all(fd, chunk)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_all(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        parts = []
        while True:
            b = f.read(1 * MIB)
            if not b:
                break
            parts.append(b)
    return b"".join(parts)


def first_difference(a: bytes | bytearray, b: bytes | bytearray, unit: int = BLOCK) -> str:
    if len(a) != len(b):
        return f"length {len(a)} != expected {len(b)}"
    for off in range(0, len(a), unit):
        if a[off: off + unit] != b[off: off + unit]:
            return f"first difference in the {unit}-byte block at offset {off}"
    return "no difference"


# --------------------------------------------------------------------------
# workloads: each returns {figure: value} and raises BenchError on a wrong result


def rate(count: float, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def wl_sequential(root: str, sizes: Sizes, cache: Cache, info: dict) -> dict[str, float]:
    path = os.path.join(root, "seq.bin")
    chunk = 1 * MIB
    n = sizes.seq_bytes // chunk
    pattern = Pattern(seed=1, chunk=chunk)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with Stopwatch() as tw:
            for i in range(n):
                write_all(fd, pattern.chunk(i))
            os.fsync(fd)
    finally:
        os.close(fd)
    size = os.stat(path).st_size
    if size != sizes.seq_bytes:
        raise BenchError(f"seq: file size {size} after writing {sizes.seq_bytes}")

    method = cache.method
    flags = os.O_RDONLY
    if cache.cold:
        cache.drop()
    else:
        method = "o_direct"
        flags |= os.O_DIRECT
    try:
        fd = os.open(path, flags)
    except OSError:
        method = "fadvise_dontneed"
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    info["seq_read_cold_method"] = method
    buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT wants
    try:
        with Stopwatch() as tr:
            i = 0
            while True:
                got = os.readv(fd, [buf])
                if got == 0:
                    break
                if got != chunk:
                    raise BenchError(f"seq: short read of {got} bytes at chunk {i}")
                if i >= n:
                    raise BenchError(f"seq: more data than the {n} chunks written")
                if buf[:] != pattern.chunk(i):
                    raise BenchError(f"seq: chunk {i} reads back wrong: "
                                     f"{first_difference(buf[:], pattern.chunk(i))}")
                i += 1
        if i != n:
            raise BenchError(f"seq: read {i} chunks, wrote {n}")
    finally:
        os.close(fd)
        buf.close()
    os.unlink(path)
    mib = sizes.seq_bytes / MIB
    return {"seq_write": rate(mib, tw.seconds), "seq_read": rate(mib, tr.seconds)}


def wl_random_fsync(root: str, sizes: Sizes, cache: Cache, info: dict) -> dict[str, float]:
    path = os.path.join(root, "rand.bin")
    nblocks = sizes.rand_file_bytes // BLOCK
    pattern = Pattern(seed=2, chunk=1 * MIB)
    model = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for i in range(sizes.rand_file_bytes // MIB):
            c = pattern.chunk(i)
            write_all(fd, c)
            model += c
        os.fsync(fd)
        rng = random.Random(3)
        pool = rng.randbytes(64 * KIB)
        writes = []
        for i in range(sizes.rand_pairs):
            blk = rng.randrange(nblocks)
            start = rng.randrange(0, len(pool) - BLOCK)
            data = struct.pack("<QQ", i, blk) + pool[start + 16: start + BLOCK]
            writes.append((blk * BLOCK, data))
        with Stopwatch() as t:
            for off, data in writes:
                if os.pwrite(fd, data, off) != BLOCK:
                    raise BenchError(f"rand: short pwrite at offset {off}")
                os.fsync(fd)
    finally:
        os.close(fd)
    for off, data in writes:
        model[off: off + BLOCK] = data
    cache.drop()
    got = read_all(path)
    if got != model:
        raise BenchError(f"rand: file content wrong after {len(writes)} writes: {first_difference(got, model)}")
    os.unlink(path)
    return {"rand_write_fsync": rate(len(writes), t.seconds)}


def wl_metadata(root: str, sizes: Sizes, cache: Cache, info: dict) -> dict[str, float]:
    d = os.path.join(root, "meta")
    os.mkdir(d)
    n = sizes.meta_files
    names = [f"file-{i:06d}" for i in range(n)]
    paths = [os.path.join(d, name) for name in names]
    out: dict[str, float] = {}

    def listing() -> list[str]:
        with os.scandir(d) as it:
            return sorted(e.name for e in it)

    with Stopwatch() as t:
        for p in paths:
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    out["create"] = rate(n, t.seconds)
    if listing() != names:
        raise BenchError(f"create: the directory does not list exactly the {n} files created")

    order = list(range(n))
    random.Random(4).shuffle(order)
    cache.drop()
    with Stopwatch() as t:
        sts = [os.stat(paths[i]) for i in order]
    out["stat"] = rate(n, t.seconds)
    inos = set()
    for i, st in zip(order, sts):
        if not stat.S_ISREG(st.st_mode) or st.st_size != 0 or st.st_nlink != 1:
            raise BenchError(f"stat: {names[i]} is not an empty regular file with one link "
                             f"(mode {st.st_mode:o}, size {st.st_size}, nlink {st.st_nlink})")
        inos.add(st.st_ino)
    if len(inos) != n:
        raise BenchError(f"stat: {n} files share {len(inos)} inode numbers")

    total = 0
    with Stopwatch() as t:
        for _ in range(sizes.readdir_passes):
            with os.scandir(d) as it:
                got = [e.name for e in it]
            total += len(got)
            if len(got) != n:
                raise BenchError(f"readdir: listed {len(got)} entries, expected {n}")
    out["readdir"] = rate(total, t.seconds)
    if sorted(got) != names:
        raise BenchError("readdir: the names listed differ from the names created")

    new_paths = [os.path.join(d, f"renamed-{i:06d}") for i in range(n)]
    with Stopwatch() as t:
        for old, new in zip(paths, new_paths):
            os.rename(old, new)
    out["rename"] = rate(n, t.seconds)
    if listing() != sorted(os.path.basename(p) for p in new_paths):
        raise BenchError("rename: the directory does not list exactly the new names")

    with Stopwatch() as t:
        for p in new_paths:
            os.unlink(p)
    out["unlink"] = rate(n, t.seconds)
    left = listing()
    if left:
        raise BenchError(f"unlink: {len(left)} entries left, e.g. {left[0]!r}")
    os.rmdir(d)
    return out


def wl_small_files(root: str, sizes: Sizes, cache: Cache, info: dict) -> dict[str, float]:
    d = os.path.join(root, "small")
    os.mkdir(d)
    rng = random.Random(5)
    pool = rng.randbytes(256 * KIB)
    files = []
    for i in range(sizes.small_files):
        size = rng.randint(1 * KIB, 16 * KIB)
        start = rng.randrange(0, len(pool) - size)
        data = struct.pack("<Q", i) + pool[start + 8: start + size]
        files.append((os.path.join(d, f"s{i:05d}"), data))
    with Stopwatch() as tw:
        for p, data in files:
            write_new_file(p, [data])
    cache.drop()
    with Stopwatch() as tr:
        got = [read_all(p) for p, _ in files]
    for (p, data), g in zip(files, got):
        if g != data:
            raise BenchError(f"small: {os.path.basename(p)} reads back wrong: {first_difference(g, data, 1024)}")
    if len(os.listdir(d)) != len(files):
        raise BenchError(f"small: the directory lists {len(os.listdir(d))} files, expected {len(files)}")
    info["small_bytes"] = sum(len(data) for _, data in files)
    return {"small_write": rate(len(files), tw.seconds), "small_read": rate(len(files), tr.seconds)}


# --------------------------------------------------------------------------
# the tarball


def stdlib_files() -> tuple[str, list[str]]:
    """The standard library directory and its regular files (relative, sorted), minus caches and site-packages."""
    base = sysconfig.get_paths()["stdlib"]
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(
            x for x in dirnames
            if x not in ("site-packages", "dist-packages", "__pycache__") and not x.startswith("config-")
        )
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full) and not os.path.islink(full) and os.access(full, os.R_OK):
                found.append(os.path.relpath(full, base))
    found.sort()
    return base, found


def ensure_tarball(variant: str) -> tuple[str, dict]:
    """Build (once) an uncompressed tar of the stdlib in CACHE_DIR; return its path and manifest."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    base, files = stdlib_files()
    key = hashlib.sha256(f"{TARBALL_FORMAT_VERSION}:{variant}:{base}:{len(files)}".encode()).hexdigest()[:12]
    tar_path = os.path.join(CACHE_DIR, f"stdlib-{variant}-{key}.tar")
    manifest_path = tar_path + ".manifest.json"
    if os.path.exists(tar_path) and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            return tar_path, json.load(f)
    if variant == "quick":
        files = files[::8]
    log(f"bench: building the {variant} tarball {tar_path} from {base} ({len(files)} files), once")
    manifest: dict[str, dict] = {}
    tmp_tar = f"{tar_path}.{os.getpid()}.tmp"
    with tarfile.open(tmp_tar, "w", format=tarfile.PAX_FORMAT) as tar:
        dirs_added = set()
        for rel in files:
            full = os.path.join(base, rel)
            with open(full, "rb") as f:
                data = f.read()
            parent = os.path.dirname(rel)
            parts = []
            while parent and parent not in dirs_added:
                parts.append(parent)
                parent = os.path.dirname(parent)
            for p in reversed(parts):
                ti = tarfile.TarInfo("stdlib/" + p)
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                ti.mtime = int(time.time())
                tar.addfile(ti)
                dirs_added.add(p)
            ti = tarfile.TarInfo("stdlib/" + rel)
            ti.size = len(data)
            ti.mode = 0o644
            ti.mtime = int(os.stat(full).st_mtime)
            tar.addfile(ti, io.BytesIO(data))
            manifest["stdlib/" + rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    result = {"files": manifest, "bytes": sum(v["size"] for v in manifest.values()), "source": base}
    tmp_manifest = f"{manifest_path}.{os.getpid()}.tmp"
    with open(tmp_manifest, "w") as f:
        json.dump(result, f)
    os.replace(tmp_tar, tar_path)
    os.replace(tmp_manifest, manifest_path)
    return tar_path, result


def wl_tar(root: str, sizes: Sizes, cache: Cache, info: dict) -> dict[str, float]:
    tar_path, manifest = ensure_tarball(sizes.tarball)
    dest = os.path.join(root, "tar")
    os.mkdir(dest)
    tar_bin = shutil.which("tar")
    # The tarball comes from the page cache in every case, so only the target filesystem is measured.
    with open(tar_path, "rb") as f:
        while f.read(8 * MIB):
            pass
    with Stopwatch() as t:
        if tar_bin:
            proc = subprocess.run([tar_bin, "-xf", tar_path, "-C", dest], capture_output=True, text=True)
            if proc.returncode != 0:
                raise BenchError(f"tar: tar -xf exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
        else:
            with tarfile.open(tar_path) as tar:
                tar.extractall(dest, filter="tar")
    info["tar_tool"] = tar_bin or "python tarfile"
    info["tar_files"] = len(manifest["files"])
    info["tar_mib_per_s"] = round(rate(manifest["bytes"] / MIB, t.seconds), 2)
    cache.drop()
    seen = 0
    for dirpath, _, filenames in os.walk(dest):
        for name in filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, dest)
            want = manifest["files"].get(rel)
            if want is None:
                raise BenchError(f"tar: unexpected file {rel}")
            data = read_all(full)
            if len(data) != want["size"] or hashlib.sha256(data).hexdigest() != want["sha256"]:
                raise BenchError(f"tar: {rel} differs from the archive (size {len(data)}, expected {want['size']})")
            seen += 1
    if seen != len(manifest["files"]):
        raise BenchError(f"tar: {seen} files extracted, the archive holds {len(manifest['files'])}")
    return {"tar_extract": rate(len(manifest["files"]), t.seconds)}


WORKLOADS: list[tuple[str, Callable[[str, Sizes, Cache, dict], dict[str, float]]]] = [
    ("sequential", wl_sequential),
    ("random", wl_random_fsync),
    ("metadata", wl_metadata),
    ("small", wl_small_files),
    ("tar", wl_tar),
]
WORKLOAD_NAMES = [name for name, _ in WORKLOADS]


def run_all(target: str, sizes: Sizes, allow_drop: bool = True, only: list[str] | None = None) -> dict:
    if not os.path.isdir(target):
        raise BenchError(f"{target}: not a directory")
    selected = [(label, fn) for label, fn in WORKLOADS if not only or label in only]
    if any(label == "tar" for label, _ in selected):
        ensure_tarball(sizes.tarball)  # outside every timing
    cache = Cache(allow_drop)
    root = tempfile.mkdtemp(prefix="pyfs-bench-", dir=target)
    info: dict = {"cache_drop": cache.method}
    figures: dict[str, float] = {}
    started = time.monotonic()
    for label, fn in selected:
        log(f"bench: {label} on {target} ...")
        try:
            got = fn(root, sizes, cache, info)
        except (BenchError, OSError) as exc:
            raise BenchError(f"{label}: {exc} (files left in {root})") from None
        for k, v in got.items():
            log(f"bench:   {k:<17} {v:12.1f} {UNITS[k]}")
        figures.update(got)
    shutil.rmtree(root)
    missing = [k for k in FIGURE_NAMES if k not in figures]
    if missing and not only:
        raise BenchError(f"figures missing: {', '.join(missing)}")
    info["seconds"] = round(time.monotonic() - started, 1)
    return {
        "target": os.path.abspath(target),
        "sizes": sizes.__dict__,
        "info": info,
        "figures": {k: {"value": figures[k], "unit": UNITS[k]} for k in FIGURE_NAMES if k in figures},
    }


def cmd_run(args: argparse.Namespace) -> int:
    sizes = Sizes.make(args.scale, args.quick)
    only = [w.strip() for w in args.only.split(",") if w.strip()] if args.only else None
    unknown = [w for w in only or [] if w not in WORKLOAD_NAMES]
    if unknown:
        print(f"bench: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOAD_NAMES)}",
              file=sys.stderr)
        return 2
    result = run_all(args.mountpoint, sizes, allow_drop=not args.no_drop_caches, only=only)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{result['target']}  (cold reads: {result['info']['cache_drop']}, "
              f"seq_read: {result['info'].get('seq_read_cold_method', '-')})")
        for name, unit, what in FIGURES:
            if name not in result["figures"]:
                continue
            print(f"  {name:<17} {result['figures'][name]['value']:12.1f} {unit:<10} {what}")
        if result["info"]["cache_drop"] != "drop_caches":
            print("  (drop_caches unavailable: stat, small_read and the result checks read warm caches)")
    return 0


# --------------------------------------------------------------------------
# compare: set up each filesystem, run the workloads in a child, tear down


def ensure_fuse2fs() -> None:
    missing = [p for p, exe in (("fuse2fs", "fuse2fs"), ("e2fsprogs", "mkfs.ext4")) if not shutil.which(exe)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"missing {' '.join(missing)}: install the Debian packages (apt-get install {' '.join(missing)})")
    log(f"bench: installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "-q", *missing], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        run_quiet(["apt-get", "update", "-q"], "apt-get update", timeout=600, env=env)
        run_quiet(["apt-get", "install", "-y", "-q", *missing], "apt-get install", timeout=600, env=env)


def pyfs_python() -> str:
    venv = os.path.join(REPO, ".venv", "bin", "python")
    return venv if os.access(venv, os.X_OK) else sys.executable


def tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [x.strip() for x in f if x.strip()]
        return lines[-1] if lines else "(empty log)"
    except OSError:
        return "(no log)"


def mounted(system: str, work: str, image_size: int) -> contextlib.AbstractContextManager[tuple[str, dict]]:
    """(directory to benchmark, facts) for a fresh instance of `system` under `work`."""
    if system == "host":
        return host_dir(work)
    if system == "pyfs":
        return pyfs_mount(work, image_size)
    if system == "fuse2fs":
        return fuse2fs_mount(work, image_size)
    raise ValueError(system)


@contextlib.contextmanager
def host_dir(work: str) -> Iterator[tuple[str, dict]]:
    d = os.path.join(work, "host")
    os.mkdir(d)
    yield d, {}


@contextlib.contextmanager
def pyfs_mount(work: str, image_size: int) -> Iterator[tuple[str, dict]]:
    """A fresh image made by mkfs.py, mounted by `python -m pyfs mount` (which returns once mounted)."""
    mnt, img, logfile = os.path.join(work, "mnt"), os.path.join(work, "pyfs.img"), os.path.join(work, "pyfs.log")
    os.mkdir(mnt)
    py = pyfs_python()
    mkfs(img, image_size, python=py)
    # The daemon keeps the mount command's stderr open, so it goes to a file, not a pipe.
    out = os.path.join(work, "pyfs-mount.out")
    try:
        with open(out, "wb") as f:
            rc = subprocess.run([py, "-m", "pyfs", "mount", img, mnt, "--log", logfile],
                                stdin=subprocess.DEVNULL, stdout=f, stderr=f, cwd=REPO, timeout=120).returncode
        if rc != 0:
            raise BenchError(f"pyfs mount exited {rc}: {tail(out)}")
        if not is_mountpoint(mnt):
            raise BenchError(f"pyfs mount returned but {mnt} is not a mount point")
    except BaseException as exc:
        if is_mountpoint(mnt):
            subprocess.run([py, "-m", "pyfs", "umount", mnt], cwd=REPO, capture_output=True, timeout=600)
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BenchError(f"pyfs mount did not return within 120 s: {tail(logfile)}") from None
        raise
    facts: dict = {}
    try:
        yield mnt, facts
    finally:
        t0 = time.monotonic()
        try:
            run_quiet([py, "-m", "pyfs", "umount", mnt], "pyfs umount", timeout=600, cwd=REPO)
        except ToolError as exc:
            log(f"bench: {exc}; trying fusermount3 -u")
            unmount_fuse(mnt)
            raise
        facts["umount_seconds"] = round(time.monotonic() - t0, 2)


@contextlib.contextmanager
def fuse2fs_mount(work: str, image_size: int) -> Iterator[tuple[str, dict]]:
    """A fresh sparse image made by `mkfs.ext4 -F -q`, served by `fuse2fs IMG MNT -f` in the background."""
    mnt, img, logfile = os.path.join(work, "mnt"), os.path.join(work, "fuse2fs.img"), os.path.join(work, "fuse2fs.log")
    os.mkdir(mnt)
    sparse_file(img, image_size)
    run_quiet(["mkfs.ext4", "-F", "-q", img], "mkfs.ext4")
    cmd = ["fuse2fs", img, mnt, "-f"]
    if os.geteuid() != 0:
        cmd += ["-o", "fakeroot"]
    with open(logfile, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
    facts: dict = {}
    try:
        wait_mounted(mnt, proc, 30, what="fuse2fs", detail=lambda: f": {tail(logfile)}")
        yield mnt, facts
    finally:
        t0 = time.monotonic()
        if is_mountpoint(mnt):
            unmount_fuse(mnt)
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            log(f"bench: fuse2fs (pid {proc.pid}) did not exit after unmount; killing it")
            proc.kill()
            proc.wait()
            raise BenchError("fuse2fs did not exit after fusermount3 -u") from None
        facts["umount_seconds"] = round(time.monotonic() - t0, 2)


def unmount_fuse(mnt: str) -> None:
    """`fusermount3 -u MNT`, saying so if it fails."""
    r = fusermount(mnt, timeout=None)
    if r.returncode != 0:
        log(f"bench: fusermount3 -u {mnt}: {r.stderr.strip()}")


def bench_child(target: str, args: argparse.Namespace, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "run", target, "--json", "--scale", str(args.scale)]
    if args.quick:
        cmd.append("--quick")
    child = run_child(cmd, timeout=timeout, pass_stderr=True)  # progress goes to our stderr
    if child.timed_out:
        raise BenchError(f"the workloads on {target} took over {timeout:.0f} s")
    if child.returncode != 0:
        raise BenchError(f"the workloads on {target} failed (exit {child.returncode}; reason above)")
    return json.loads(child.stdout)


def still_mounted(work: str) -> bool:
    """A mount under `work` that could not be undone: the directory is left as it is."""
    if is_mountpoint(os.path.join(work, "mnt")):
        log(f"bench: {work}/mnt is still mounted; leaving {work}")
        return True
    return False


def cmd_compare(args: argparse.Namespace) -> int:
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad or not systems:
        print(f"bench: unknown system(s) {', '.join(bad)}; choose from {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("bench: --rounds must be at least 1", file=sys.stderr)
        return 2
    if "fuse2fs" in systems:
        ensure_fuse2fs()
    sizes = Sizes.make(args.scale, args.quick)
    ensure_tarball(sizes.tarball)
    samples: dict[str, dict[str, list[float]]] = {s: {k: [] for k in FIGURE_NAMES} for s in systems}
    runs: list[dict] = []
    errors: list[str] = []
    parent = args.workdir or tempfile.gettempdir()
    for r in range(args.rounds):
        order = list(systems) if (r % 2 == 0 or args.keep_order) else list(reversed(systems))
        for system in order:
            log(f"bench: round {r + 1}/{args.rounds}: {system}")
            record = {"round": r + 1, "system": system}
            try:
                with scratch_dir(f"pyfs-cmp-{system}-", parent, keep=still_mounted) as work, \
                        mounted(system, work, args.image_size) as (target, facts):
                    result = bench_child(target, args, args.timeout)
                record.update(result=result, facts=facts)
                for k in FIGURE_NAMES:
                    samples[system][k].append(result["figures"][k]["value"])
            except ToolError as exc:
                log(f"bench: FAILED round {r + 1} {system}: {exc}")
                errors.append(f"round {r + 1} {system}: {exc}")
                record["error"] = str(exc)
            finally:
                runs.append(record)

    medians = {s: {k: (statistics.median(v) if v else None) for k, v in samples[s].items()} for s in systems}
    ratios: dict[str, dict[str, float | None]] = {}
    for other in ("fuse2fs", "host"):
        if "pyfs" in systems and other in systems:
            ratios[f"pyfs/{other}"] = {
                k: (medians["pyfs"][k] / medians[other][k]
                    if medians["pyfs"][k] is not None and medians[other][k] else None)
                for k in FIGURE_NAMES
            }
    env = environment(runs)
    if args.json:
        print(json.dumps({
            "command": " ".join(sys.argv),
            "rounds": args.rounds,
            "sizes": sizes.__dict__,
            "environment": env,
            "higher_is_better": True,
            "median": {s: {k: {"value": medians[s][k], "unit": UNITS[k], "samples": samples[s][k]}
                           for k in FIGURE_NAMES} for s in systems},
            "ratios": ratios,
            "runs": runs,
            "errors": errors,
        }, indent=1))
    else:
        print(format_table(systems, medians, ratios, args, env, sizes))
        for e in errors:
            print(f"FAILED {e}")
    return 1 if errors else 0


def host_facts() -> dict:
    return {"kernel": platform.release(), "python": platform.python_version(), "cpus": os.cpu_count()}


def environment(runs: list[dict]) -> dict:
    env = host_facts()
    methods = {r["result"]["info"].get("cache_drop") for r in runs if "result" in r}
    env["cold_reads"] = ",".join(sorted(m for m in methods if m)) or "?"
    try:
        v = subprocess.run(["fuse2fs", "-V"], capture_output=True, text=True).stderr.splitlines()
        env["fuse2fs"] = v[0] if v else "?"
    except OSError:
        pass
    return env


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"


def format_table(systems, medians, ratios, args, env, sizes: Sizes) -> str:
    cols = ["figure", "unit", *systems, *ratios.keys()]
    rows = []
    for name in FIGURE_NAMES:
        row = [name, UNITS[name], *(fmt(medians[s][name]) for s in systems)]
        for key in ratios:
            v = ratios[key][name]
            flag = " <" if key == "pyfs/fuse2fs" and v is not None and v < 0.5 else ""
            row.append("-" if v is None else f"{v:.2f}{flag}")
        rows.append(row)
    out = [
        f"median of {args.rounds} round(s); every figure is higher-is-better, so a ratio below 1.00 means "
        f"pyfs is slower ('<' marks pyfs/fuse2fs below 0.50)",
        f"sizes: seq {sizes.seq_bytes // MIB} MiB, random fsync {sizes.rand_pairs} x 4 KiB in a "
        f"{sizes.rand_file_bytes // MIB} MiB file, {sizes.meta_files} files for metadata, "
        f"{sizes.small_files} small files, {sizes.tarball} stdlib tarball",
        "environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
        *table_lines([cols, *rows], right=range(2, len(cols)), rule=True),
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------
# longop: latency of other requests while a long operation runs


LONGOP_PROBE_FILES = 4000
LONGOP_PROBE_BYTES = 64 * MIB
LONGOP_INTERVAL = 0.005  # seconds between two probe pairs
LONGOP_IDLE_PAIRS = 1000
LONGOP_SHIFT_ROUNDS = 8


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def latency_summary(samples: list[float]) -> dict:
    if not samples:
        return {"count": 0, "max_ms": None, "p50_ms": None, "p99_ms": None}
    return {"count": len(samples), "max_ms": round(max(samples) * 1e3, 3),
            "p50_ms": round(percentile(samples, 50) * 1e3, 3), "p99_ms": round(percentile(samples, 99) * 1e3, 3)}


class Probes:
    """Cold `stat`s of small files and cold 4 KiB reads of a probe file, one of each per `pair()`."""

    def __init__(self, root: str, seed: int) -> None:
        rng = random.Random(seed)
        self.paths = [os.path.join(root, "small", f"s{i:05d}") for i in range(LONGOP_PROBE_FILES)]
        rng.shuffle(self.paths)
        self.offsets = [b * BLOCK for b in range(LONGOP_PROBE_BYTES // BLOCK)]
        rng.shuffle(self.offsets)
        self.fd = os.open(os.path.join(root, "probe.bin"), os.O_RDONLY)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)
        self.next = 0
        self.stat_s: list[float] = []
        self.read_s: list[float] = []
        self.wrapped = False

    def pair(self) -> None:
        i = self.next % len(self.paths)
        j = self.next % len(self.offsets)
        if self.next and (i == 0 or j == 0):
            self.wrapped = True  # from here on some probes may hit the kernel's caches
        self.next += 1
        t0 = time.perf_counter()
        st = os.stat(self.paths[i])
        t1 = time.perf_counter()
        got = os.pread(self.fd, BLOCK, self.offsets[j])
        t2 = time.perf_counter()
        if st.st_size != 100:
            raise BenchError(f"longop: {self.paths[i]} has size {st.st_size}, expected 100")
        if got[:8] != struct.pack("<Q", self.offsets[j] // BLOCK):
            raise BenchError(f"longop: probe block at {self.offsets[j]} reads back wrong")
        self.stat_s.append(t1 - t0)
        self.read_s.append(t2 - t1)

    def close(self) -> None:
        os.close(self.fd)

    def summary(self) -> dict:
        return {"stat": latency_summary(self.stat_s), "read_4k": latency_summary(self.read_s),
                "caches_reused": self.wrapped}


def original_bytes(pattern: Pattern, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file written as consecutive `pattern` chunks."""
    size = pattern.chunk_size
    out = bytearray()
    for i in range(start // size, (end + size - 1) // size):
        c = pattern.chunk(i)
        out += c[max(0, start - i * size): min(size, end - i * size)]
    return bytes(out)


# A file as a list of pieces: (start, end) of the original file, or (None, n) for n bytes of hole.
Pieces = list[tuple[int | None, int]]


def _piece_len(piece: tuple[int | None, int]) -> int:
    start, end = piece
    return end if start is None else end - start


def _piece_slice(piece: tuple[int | None, int], lo: int, hi: int) -> tuple[int | None, int]:
    start, end = piece
    return (None, hi - lo) if start is None else (start + lo, start + hi)


def collapse_pieces(pieces: Pieces, offset: int, length: int) -> Pieces:
    """`pieces` after collapsing [offset, offset+length)."""
    out, at = [], 0
    for piece in pieces:
        n = _piece_len(piece)
        cut_lo, cut_hi = max(offset, at) - at, min(offset + length, at + n) - at
        if cut_lo >= cut_hi:
            out.append(piece)
        else:
            if cut_lo > 0:
                out.append(_piece_slice(piece, 0, cut_lo))
            if cut_hi < n:
                out.append(_piece_slice(piece, cut_hi, n))
        at += n
    return out


def insert_pieces(pieces: Pieces, offset: int, length: int) -> Pieces:
    """`pieces` after inserting a hole of `length` at `offset`."""
    out, at, done = [], 0, False
    for piece in pieces:
        n = _piece_len(piece)
        if not done and at <= offset < at + n:
            if offset > at:
                out.append(_piece_slice(piece, 0, offset - at))
            out.append((None, length))
            out.append(_piece_slice(piece, offset - at, n))
            done = True
        else:
            out.append(piece)
        at += n
    return out


def longop_measure(root: str, file_bytes: int, cache: Cache) -> dict:
    """The body of `longop` on a mounted pyfs at `root`; returns the report."""
    from pyfs.client import commands as client  # noqa: PLC0415 - only this subcommand needs it

    chunk = 1 * MIB
    nchunks = file_bytes // chunk
    big = os.path.join(root, "big.bin")
    pattern = Pattern(seed=11, chunk=chunk)
    with Stopwatch() as written:
        write_new_file(big, (pattern.chunk(i) for i in range(nchunks)), fsync=True)
    os.mkdir(os.path.join(root, "small"))
    for i in range(LONGOP_PROBE_FILES):
        write_new_file(os.path.join(root, "small", f"s{i:05d}"), [bytes(100)])
    block_tail = random.Random(12).randbytes(BLOCK - 8)
    write_new_file(os.path.join(root, "probe.bin"),
                   (b"".join(struct.pack("<Q", b) + block_tail for b in range(b0, b0 + 256))
                    for b0 in range(0, LONGOP_PROBE_BYTES // BLOCK, 256)), fsync=True)
    client.flush(root)

    def phase(seed: int, background: threading.Thread | None) -> Probes:
        cache.drop()
        probes = Probes(root, seed)
        try:
            if background is not None:
                background.start()
            while True:
                tick = time.perf_counter()
                probes.pair()
                if background is None:
                    if probes.next >= LONGOP_IDLE_PAIRS:
                        break
                elif not background.is_alive():
                    break
                time.sleep(max(0.0, LONGOP_INTERVAL - (time.perf_counter() - tick)))
            if background is not None:
                background.join()
            return probes
        finally:
            probes.close()

    def ops_phase(seed: int, ops: list[tuple[str, int, int]]) -> tuple[Probes, dict[str, list[float]]]:
        """Probe while `ops` (kind, offset, length) run one after the other in the background."""
        seconds: dict[str, list[float]] = {}
        failure: list[str] = []

        def run() -> None:
            for kind, offset, length in ops:
                t = time.perf_counter()
                try:
                    getattr(client, kind)(big, offset, length)
                except OSError as exc:
                    failure.append(f"{kind} of {length} bytes at {offset}: {exc}")
                    return
                seconds.setdefault(kind, []).append(time.perf_counter() - t)

        probes = phase(seed, threading.Thread(target=run, name="long operations"))
        if failure:
            raise BenchError(f"longop: {failure[0]}")
        return probes, seconds

    idle = phase(21, None)
    # 1. Collapse a small range near the start, then insert it back: both move every
    #    extent after it (the most steps), repeated to gather enough samples.
    # 2. Collapse most of the file: its extents are dropped, the last 64 MiB move down.
    near = (min(4 * MIB, file_bytes // 8), MIB + BLOCK)
    shifts = [op for _ in range(LONGOP_SHIFT_ROUNDS) for op in (("collapse", *near), ("insert", *near))]
    pieces: Pieces = [(0, file_bytes)]
    for kind, offset, length in shifts:
        pieces = (collapse_pieces if kind == "collapse" else insert_pieces)(pieces, offset, length)
    shift, shift_seconds = ops_phase(22, shifts)
    keep = max(1, min(64, nchunks // 8)) * chunk
    most = (keep, file_bytes - 2 * keep)
    pieces = collapse_pieces(pieces, *most)
    drop, drop_seconds = ops_phase(23, [("collapse", *most)])

    expected_size = sum(_piece_len(p) for p in pieces)
    size = os.stat(big).st_size
    if size != expected_size:
        raise BenchError(f"longop: size {size} after the long operations, expected {expected_size}")
    cache.drop()
    with open(big, "rb", buffering=0) as f:
        at = 0
        for piece in pieces:
            n = _piece_len(piece)
            for lo in range(0, n, chunk):
                hi = min(n, lo + chunk)
                start, _ = _piece_slice(piece, lo, hi)
                want = bytes(hi - lo) if start is None else original_bytes(pattern, start, start + hi - lo)
                got = f.read(hi - lo)
                if got != want:
                    raise BenchError(f"longop: the file differs at offset {at}: {first_difference(got, want)}")
                at += hi - lo
        if f.read(1):
            raise BenchError("longop: the file is longer than its size says")

    def timing(seconds: dict[str, list[float]]) -> dict:
        return {kind: {"count": len(v), "median_s": round(statistics.median(v), 3), "max_s": round(max(v), 3)}
                for kind, v in seconds.items()}

    return {
        "file_bytes": file_bytes,
        "write_mib_per_s": round(rate(file_bytes / MIB, written.seconds), 1),
        "interval_ms": LONGOP_INTERVAL * 1e3,
        "cold": cache.cold,
        "idle": idle.summary(),
        "shift": {"offset": near[0], "length": near[1], "rounds": LONGOP_SHIFT_ROUNDS,
                  "operations": timing(shift_seconds), **shift.summary()},
        "collapse_most": {"offset": most[0], "length": most[1], "operations": timing(drop_seconds),
                          **drop.summary()},
    }


def cmd_longop(args: argparse.Namespace) -> int:
    file_bytes = 64 * MIB if args.quick else max(16, round(GIB * args.scale / MIB)) * MIB
    image_size = max(3 * GIB, 2 * file_bytes + GIB)
    cache = Cache(not args.no_drop_caches)
    with scratch_dir("pyfs-longop-", args.workdir, keep=still_mounted) as work, \
            pyfs_mount(work, image_size) as (mnt, _):
        log(f"bench: longop: {file_bytes // MIB} MiB file on {mnt} ...")
        report = longop_measure(mnt, file_bytes, cache)
    report["environment"] = host_facts()
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"pyfs, {file_bytes // MIB} MiB file (written at {report['write_mib_per_s']} MiB/s); "
          f"one stat + one 4 KiB read of other files every {report['interval_ms']:.0f} ms, "
          f"{'cold' if report['cold'] else 'warm (no drop_caches)'}")
    phases = [("idle", "no long operation running", report["idle"])]
    sh, cm = report["shift"], report["collapse_most"]

    def took(ops: dict) -> str:
        return ", ".join(f"{kind} {t['median_s']:.2f} s (max {t['max_s']:.2f} s, {t['count']}x)"
                         for kind, t in ops.items())

    phases.append(("shift", f"collapse then insert of {format_size(sh['length'])} at {format_size(sh['offset'])}, "
                            f"{sh['rounds']} rounds, each moving every extent after it: {took(sh['operations'])}", sh))
    phases.append(("collapse_most", f"collapse of {format_size(cm['length'])} at {format_size(cm['offset'])} "
                                    f"(drops most of the file): {took(cm['operations'])}", cm))
    print(f"  {'phase':<15} {'probe':<8} {'count':>6} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    for name, _, figures in phases:
        for probe in ("stat", "read_4k"):
            s = figures[probe]
            cells = [f"{s[k]:9.2f}" if s[k] is not None else f"{'-':>9}" for k in ("p50_ms", "p99_ms", "max_ms")]
            print(f"  {name:<15} {probe:<8} {s['count']:>6} {' '.join(cells)}")
    for name, what, figures in phases:
        print(f"  {name}: {what}" + ("; more samples than probes: some hit the kernel's caches"
                                     if figures["caches_reused"] else ""))
    return 0


def format_size(n: int) -> str:
    if n % MIB == 0:
        return f"{n // MIB} MiB"
    return f"{n / MIB:.3f} MiB"


# --------------------------------------------------------------------------


def size_arg(text: str) -> int:
    units = {"": 1, "K": KIB, "M": MIB, "G": GIB}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = t[-1] if t and t[-1] in "KMG" else ""
    try:
        return int(float(t[: len(t) - len(suffix)]) * units[suffix])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="measure one mounted directory")
    r.add_argument("mountpoint")
    r.add_argument("--only", metavar="W1,W2", help=f"run only these workloads: {','.join(WORKLOAD_NAMES)}")
    r.add_argument("--no-drop-caches", action="store_true",
                   help="do not use /proc/sys/vm/drop_caches (O_DIRECT for the sequential read, others warm)")
    c = sub.add_parser("compare", help="pyfs against fuse2fs and a host directory")
    c.add_argument("--rounds", type=int, default=1)
    c.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of pyfs,fuse2fs,host")
    c.add_argument("--image-size", type=size_arg, default=2 * GIB, help="image size (default 2G)")
    c.add_argument("--workdir", help="parent of the per-round temp dirs (default: the system temp dir)")
    c.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one system's workloads")
    c.add_argument("--keep-order", action="store_true", help="same system order in every round")
    lo = sub.add_parser("longop", help="latency of stat and 4 KiB reads while a 1 GiB collapse runs (pyfs)")
    lo.add_argument("--workdir", help="parent of the temp dir holding the image (default: the system temp dir)")
    lo.add_argument("--no-drop-caches", action="store_true", help="do not use /proc/sys/vm/drop_caches")
    for q in (r, c, lo):
        q.add_argument("--json", action="store_true", help="print JSON (figure name -> value and unit)")
        q.add_argument("--scale", type=float, default=1.0, help="multiply every size and count by S")
        q.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scale <= 0:
        print("bench: --scale must be positive", file=sys.stderr)
        return 2
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "longop":
            return cmd_longop(args)
        return cmd_compare(args)
    except (ToolError, OSError) as exc:
        print(f"bench: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())

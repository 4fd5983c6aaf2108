"""Power-loss images for tools/crashloop.py, built from a recording log (pyfs/engine/recorder.py).

The daemon of a --power-cut round runs over a `RecordingDevice`; the harness
kept a copy of the image as it was at mount time (after an fsync of the file,
so it is a durable starting point).  `CrashPlanner` replays the log onto that
copy and yields crash images:

- at every flush boundary (or an even sample of them when a budget is set):
  every write the flushes covered, none of the writes still pending;
- at random cut points: the covered writes, a random subset of the pending
  ones, and the last pending one torn (a strict prefix of its 512-byte
  sectors, possibly empty), as `FaultDevice.crash_image`'s keep_some and
  tear_last modes do in process (pyfs/engine/device.py).

A flush covers the writes that had completed when it began (the record says
which), so a write issued while a flush ran stays pending, and a write whose
pwrite failed is never covered.

An image is never materialised: `OverlayDevice` reads the base copy through
a dict of changed 4 KiB pages, and writes (the mount's replay) go to a
private layer.  `read_tree` reads an image's tree through the core API
(`FileSystem`), the same view the kill rounds read through FUSE.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

from crashloop_model import CHUNK, Entry, TreeState, chunk_digest, content_digest, entry_of, file_kind

from pyfs.engine.device import SECTOR, DeviceError
from pyfs.engine.recorder import FAILED, FLUSH, WRITE, Record
from tools.common import read_fs_file, walk_fs

PAGE = 4096
READ = 16 * CHUNK  # bytes per core read call when reading a tree back


class PageImage:
    """A sparse set of 4 KiB pages over a read-only base file: the image after some writes."""

    def __init__(self, base_fd: int, size: int, pages: dict[int, bytes] | None = None) -> None:
        self.base_fd = base_fd
        self.size = size
        self.pages: dict[int, bytes] = {} if pages is None else pages

    def copy(self) -> "PageImage":
        return PageImage(self.base_fd, self.size, dict(self.pages))

    def page(self, n: int) -> bytes:
        got = self.pages.get(n)
        if got is None:
            got = os.pread(self.base_fd, PAGE, n * PAGE)
            if len(got) < PAGE:
                got = got + bytes(PAGE - len(got))
        return got

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos = 0
        while pos < len(view):
            n, inner = divmod(offset + pos, PAGE)
            take = min(PAGE - inner, len(view) - pos)
            if inner == 0 and take == PAGE:
                self.pages[n] = bytes(view[pos : pos + PAGE])
            else:
                page = bytearray(self.page(n))
                page[inner : inner + take] = view[pos : pos + take]
                self.pages[n] = bytes(page)
            pos += take

    def read(self, offset: int, length: int) -> bytes:
        out = bytearray()
        pos = offset
        end = offset + length
        while pos < end:
            n, inner = divmod(pos, PAGE)
            page = self.pages.get(n)
            if page is not None:
                take = min(PAGE - inner, end - pos)
                out += page[inner : inner + take]
                pos += take
                continue
            # A run of pages the writes never touched: one read of the base.
            stop = n + 1
            while stop * PAGE < end and stop not in self.pages:
                stop += 1
            take = min(stop * PAGE, end) - pos
            got = os.pread(self.base_fd, take, pos)
            out += got + bytes(take - len(got))
            pos += take
        return bytes(out)

    def save(self, path: str) -> None:
        """Write the whole image to `path` (a sparse copy of the base with the pages applied)."""
        with open(path, "wb") as out:
            out.truncate(self.size)
            offset = 0
            while offset < self.size:
                try:
                    data_at = os.lseek(self.base_fd, offset, os.SEEK_DATA)
                except OSError:
                    break
                hole_at = os.lseek(self.base_fd, data_at, os.SEEK_HOLE)
                pos = data_at
                while pos < hole_at:
                    chunk = os.pread(self.base_fd, min(1 << 20, hole_at - pos), pos)
                    if not chunk:
                        break
                    os.pwrite(out.fileno(), chunk, pos)
                    pos += len(chunk)
                offset = hole_at
            for n, page in self.pages.items():
                os.pwrite(out.fileno(), page, n * PAGE)


class OverlayDevice:
    """The Device protocol over a `PageImage`; writes land in a private copy, flush does nothing."""

    def __init__(self, image: PageImage, *, read_only: bool = False, path: str = "<crash image>") -> None:
        self.image = image.copy() if not read_only else image
        self.size = image.size
        self.read_only = read_only
        self.path = path
        self.write_count = 0
        self.flush_count = 0

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DeviceError(errno.EIO if offset >= 0 else errno.EINVAL, f"I/O outside the image at {offset}")

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self.image.read(offset, length)

    def pwrite(self, offset: int, data: bytes) -> None:
        if self.read_only:
            raise DeviceError(errno.EROFS, "device is read-only")
        self._check(offset, len(data))
        self.image.write(offset, data)
        self.write_count += 1

    def flush(self) -> None:
        self.flush_count += 1

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class CrashImage:
    """One power-loss image: the log cut after record `cut` (exclusive index), and how."""

    cut: int  # records[:cut] were issued
    log_pos: int  # log offset of that cut
    mode: str  # "flush" or "cut"
    kept: tuple[int, ...]  # pending writes (seq) that landed whole
    torn: tuple[int, int] | None  # (seq, bytes that landed) of the torn last write
    image: PageImage

    def describe(self) -> str:
        torn = f", write {self.torn[0]} torn after {self.torn[1]} bytes" if self.torn else ""
        return f"cut after log record {self.cut} (log offset {self.log_pos}, {self.mode}; " \
               f"{len(self.kept)} unflushed writes kept{torn})"


def torn_length(offset: int, length: int, rng: random.Random) -> int:
    """Bytes of a write that land when it is torn: a strict prefix ending on a sector boundary."""
    end = offset + length
    first_boundary = (offset // SECTOR + 1) * SECTOR
    cuts = [offset, *range(first_boundary, end, SECTOR)]
    return rng.choice(cuts) - offset


class CrashPlanner:
    """Replays a recording log onto the base image and yields the crash images asked for."""

    def __init__(self, base_fd: int, size: int, records: list[Record]) -> None:
        self.base_fd = base_fd
        self.size = size
        self.records = records

    def flush_cuts(self) -> list[int]:
        """Cut indices right after each flush record."""
        return [i + 1 for i, r in enumerate(self.records) if r.kind == FLUSH]

    def images(self, rng: random.Random, budget: int | None) -> Iterator[CrashImage]:
        """Every flush boundary plus as many random cuts (or `budget` images in all, half of each)."""
        flushes = self.flush_cuts()
        n = len(self.records)
        if budget is None:
            chosen_flushes = flushes
            randoms = sorted(rng.randint(0, n) for _ in range(max(1, len(flushes))))
        else:
            want_f = min(len(flushes), budget // 2)
            if want_f and len(flushes) > want_f:
                step = len(flushes) / want_f
                chosen_flushes = sorted({flushes[min(len(flushes) - 1, int((i + 1) * step) - 1)]
                                         for i in range(want_f)})
            else:
                chosen_flushes = flushes[:want_f]
            randoms = sorted(rng.randint(0, n) for _ in range(budget - len(chosen_flushes)))
        plan = sorted([(c, "flush") for c in chosen_flushes] + [(c, "cut") for c in randoms])
        yield from self._build(plan, rng)

    def _build(self, plan: list[tuple[int, str]], rng: random.Random) -> Iterator[CrashImage]:
        durable = PageImage(self.base_fd, self.size)
        pending: dict[int, Record] = {}  # seq -> write, not yet covered by a flush
        failed: set[int] = set()
        applied = 0
        for cut, mode in plan:
            while applied < cut:
                r = self.records[applied]
                if r.kind == WRITE:
                    pending[r.seq] = r
                elif r.kind == FAILED:
                    failed.add(r.seq)
                elif r.kind == FLUSH:
                    skip = set(r.in_flight) | failed
                    for seq in sorted(pending):
                        if seq < r.arg and seq not in skip:
                            w = pending.pop(seq)
                            durable.write(w.offset, w.payload)
                applied += 1
            pos = self.records[cut - 1].pos if cut else 0
            order = sorted(pending)
            if mode == "flush" or not order:
                yield CrashImage(cut, pos, mode, (), None, durable.copy())
                continue
            image = durable.copy()
            *whole, last = order
            kept = tuple(s for s in whole if rng.random() < 0.5)
            for s in kept:
                w = pending[s]
                image.write(w.offset, w.payload)
            w = pending[last]
            landed = torn_length(w.offset, len(w.payload), rng) if rng.random() < 0.7 else len(w.payload)
            torn = None
            if landed == len(w.payload):
                kept = (*kept, last)
                image.write(w.offset, w.payload)
            elif landed:
                torn = (last, landed)
                image.write(w.offset, w.payload[:landed])
            yield CrashImage(cut, pos, mode, kept, torn, image)


def replay_all(base_fd: int, size: int, records: list[Record]) -> PageImage:
    """The image with every logged write applied, in log order (what a kill leaves)."""
    image = PageImage(base_fd, size)
    for r in records:
        if r.kind == WRITE:
            image.write(r.offset, r.payload)
    return image


def unfaithful_pages(replayed: PageImage, real_fd: int, records: list[Record], tail: int = 2) -> list[int]:
    """Pages where the real image differs from base + log, beyond the last `tail` writes' pages.

    The last write of each thread may be logged and never issued (the kill
    landed between the log and the image write); nothing else may differ.
    """
    tail_pages: set[int] = set()
    for r in [r for r in records if r.kind == WRITE][-tail:]:
        tail_pages.update(range(r.offset // PAGE, (r.offset + len(r.payload) - 1) // PAGE + 1))
    bad = []
    for n, page in replayed.pages.items():
        real = os.pread(real_fd, PAGE, n * PAGE)
        if real != page[: len(real)] and n not in tail_pages:
            bad.append(n)
    return sorted(bad)


# -- reading a tree through the core API ------------------------------------------------------


def read_tree(fs, keep_content: bool = False) -> tuple[TreeState, dict[str, bytes]]:
    """The tree of a mounted `pyfs.fs.FileSystem` as a TreeState (and file contents if asked)."""
    from pyfs.format.records import ROOT_INO

    contents: dict[str, bytes] = {}
    entries = {".": _entry_of(fs, ROOT_INO, fs.getattr(ROOT_INO), contents, ".", keep_content)}
    for names, attr in walk_fs(fs):
        path = "/".join(os.fsdecode(name) for name in names)
        entries[path] = _entry_of(fs, attr.ino, attr, contents, path, keep_content)
    return TreeState(entries), contents


def _entry_of(fs, ino: int, attr, contents: dict[str, bytes], path: str, keep: bool) -> Entry:
    xattrs = {os.fsdecode(n): fs.getxattr(ino, n) for n in fs.listxattr(ino)}
    kind = file_kind(attr.mode)
    if kind == "file":
        digests = []
        parts = []
        for piece in read_fs_file(fs, ino, attr.size, READ):
            view = memoryview(piece)
            digests.extend(chunk_digest(view[i : i + CHUNK]) for i in range(0, len(piece), CHUNK))
            if keep:
                parts.append(piece)
        if keep:
            contents[path] = b"".join(parts)
        return entry_of(attr.mode, attr.mtime_ns, ino, xattrs, size=attr.size,
                        content=content_digest(attr.size, digests))
    target = os.fsdecode(fs.readlink(ino)) if kind == "symlink" else ""
    return entry_of(attr.mode, attr.mtime_ns, ino, xattrs, target=target)

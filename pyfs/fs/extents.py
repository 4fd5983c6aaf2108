"""File data: the extent map of an inode, copy-on-write writes and verified reads.

Promises (DESIGN.md "Data", invariants 3-5):
- Extents `(ino, file_offset)` never overlap.  A write goes to fresh space as
  regions of at most 128 KiB, each with one checksum; the extents it covers
  are trimmed or split (pieces keep pointing into their old region), and the
  bucket counts of every region that starts or stops being used change in
  the same transaction.  Live data is never overwritten in place.
- Small files (the whole file within `inline_max` bytes) keep their data
  inline in the extent value: no data region, no data flush.
- Holes are the absence of extents and read as zeros.  Reads verify the
  whole region's checksum and fail with EIO on a mismatch.
- The caller commits the transaction right after `write` returns, without
  yielding (the engine's rule for fresh data space).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from ..engine.engine import MAX_DATA_REGION, Engine
from ..format.records import Extent, Tree
from ..engine.transaction import Transaction

INLINE_LIMIT = 2048


@dataclass
class Change:
    """What an extent-map edit did to the inode's data bytes."""

    data_bytes: int = 0


class RegionCache:
    """Recently verified data regions, so sequential small reads verify a region once."""

    def __init__(self, engine: Engine, max_regions: int = 64) -> None:
        self.engine = engine
        self.max_regions = max_regions
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    def read(self, ext: Extent) -> bytes:
        key = (ext.region_addr, ext.region_csum)
        data = self._cache.get(key)
        if data is None:
            data = self.engine.read_data(ext.region_addr, ext.region_len, ext.region_csum)
            self._cache[key] = data
            while len(self._cache) > self.max_regions:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return data

    def clear(self) -> None:
        self._cache.clear()


def overlapping(t: Transaction, ino: int, start: int, end: int | None) -> list[tuple[int, Extent]]:
    """Extents overlapping [start, end) in file order (end None: to the end of the file)."""
    out: list[tuple[int, Extent]] = []
    for (_, off), raw in t.scan(Tree.EXTENTS, (ino, 0), (ino, start + 1), reverse=True):
        ext = Extent.decode(raw)
        if off + ext.length > start:
            out.append((off, ext))
        break
    stop = (ino, end) if end is not None else (ino + 1, 0)
    for (_, off), raw in t.scan(Tree.EXTENTS, (ino, start + 1), stop):
        out.append((off, Extent.decode(raw)))
    return out


def piece(ext: Extent, skip: int, length: int) -> Extent:
    """The part of `ext` from `skip` bytes in, `length` bytes long."""
    if ext.inline is not None:
        return Extent(length=length, inline=ext.inline[skip : skip + length])
    return Extent(length, ext.region_addr, ext.region_len, ext.region_csum, ext.offset + skip)


def punch(t: Transaction, ino: int, start: int, end: int | None) -> Change:
    """Remove every byte of [start, end) from the extent map, keeping the pieces outside."""
    change = Change()
    for off, ext in overlapping(t, ino, start, end):
        ext_end = off + ext.length
        cut_start = max(off, start)
        cut_end = ext_end if end is None else min(ext_end, end)
        removed = cut_end - cut_start
        t.delete(Tree.EXTENTS, (ino, off))
        if off < cut_start:
            t.put(Tree.EXTENTS, (ino, off), piece(ext, 0, cut_start - off).encode())
        if cut_end < ext_end:
            t.put(Tree.EXTENTS, (ino, cut_end), piece(ext, cut_end - off, ext_end - cut_end).encode())
        if ext.inline is None:
            t.adjust_bucket_usage(ext.addr + (cut_start - off), -removed)
        change.data_bytes -= removed
    return change


def read(t: Transaction, cache: RegionCache, ino: int, size: int, offset: int, length: int) -> bytes:
    """Up to `length` bytes at `offset` of a file of `size` bytes (holes are zeros)."""
    if offset >= size or length <= 0:
        return b""
    end = min(size, offset + length)
    out = bytearray(end - offset)
    for off, ext in overlapping(t, ino, offset, end):
        lo = max(off, offset)
        hi = min(off + ext.length, end)
        if ext.inline is not None:
            src = ext.inline
            base = 0
        else:
            src = cache.read(ext)
            base = ext.offset
        out[lo - offset : hi - offset] = src[base + lo - off : base + hi - off]
    return bytes(out)


def inline_max(engine: Engine) -> int:
    return max(0, min(INLINE_LIMIT, engine.max_value_bytes - 64))


def write(t: Transaction, engine: Engine, ino: int, size: int, offset: int, data: bytes) -> Change:
    """Put `data` at `offset` of a file currently `size` bytes long (size is the caller's to update)."""
    end = offset + len(data)
    limit = inline_max(engine)
    if size <= limit:
        existing = overlapping(t, ino, 0, None)
        if max(size, end) <= limit and all(ext.inline is not None for _, ext in existing):
            return _write_inline(t, ino, size, offset, data, existing)
    change = punch(t, ino, offset, end)
    if size <= limit:
        # The file outgrows inline storage: its inline bytes move to a region.
        for off, ext in overlapping(t, ino, 0, None):
            if ext.inline is not None:
                t.delete(Tree.EXTENTS, (ino, off))
                change.data_bytes -= ext.length
                change.data_bytes += _write_regions(t, engine, ino, off, ext.inline)
    change.data_bytes += _write_regions(t, engine, ino, offset, data)
    return change


def _write_regions(t: Transaction, engine: Engine, ino: int, offset: int, data: bytes) -> int:
    view = memoryview(data)
    pos = 0
    region = min(MAX_DATA_REGION, engine.sb.bucket_size)
    while pos < len(data):
        chunk = bytes(view[pos : pos + region])
        addr = engine.allocate_data(len(chunk))
        csum = engine.write_data(addr, chunk)
        ext = Extent(len(chunk), addr, len(chunk), csum, 0)
        t.put(Tree.EXTENTS, (ino, offset + pos), ext.encode())
        t.adjust_bucket_usage(addr, len(chunk))
        pos += len(chunk)
    return len(data)


def _write_inline(
    t: Transaction, ino: int, size: int, offset: int, data: bytes, existing: list[tuple[int, Extent]]
) -> Change:
    end = max(size, offset + len(data))
    current = bytearray(end)
    old_bytes = 0
    for off, ext in existing:
        assert ext.inline is not None
        current[off : off + ext.length] = ext.inline[: max(0, end - off)]
        old_bytes += ext.length
        t.delete(Tree.EXTENTS, (ino, off))
    current[offset : offset + len(data)] = data
    t.put(Tree.EXTENTS, (ino, 0), Extent(length=end, inline=bytes(current)).encode())
    return Change(end - old_bytes)

"""Bounded edits of an inode's extent map, the steps long operations are made of.

Promises:
- Every function touches at most `limit` extents (plus the one or two it
  splits at a boundary), so a step fits one journal entry whatever the size
  of the file.
- Extents keep their data where it is: a move changes only the key
  `(ino, file_offset)`, never a region or a bucket count; a drop lowers the
  bucket counts of the bytes it releases, in the same transaction.
- Extents never overlap, between steps as well as after the last one, as
  long as the caller keeps the order each function names (a shift down goes
  up the file, a shift up goes down it), so a crash between two steps
  leaves a valid extent map for the logged operation to carry on from.
"""

from __future__ import annotations

import itertools

from ..format.records import Extent, Tree
from ..engine.transaction import Transaction
from . import extents


def drop_range(t: Transaction, ino: int, start: int, end: int | None, limit: int) -> tuple[int, int | None]:
    """Remove the bytes of [start, end) (end None: the rest of the file), at most `limit` extents of them.

    Returns (bytes removed, where the next step starts or None when the range is empty).
    """
    stop = (ino, end) if end is not None else (ino + 1, 0)
    cut: int | None = None
    seen = 0
    for (_, off), _raw in t.scan(Tree.EXTENTS, (ino, start + 1), stop):
        seen += 1
        if seen > limit:
            cut = off
            break
    change = extents.punch(t, ino, start, end if cut is None else cut)
    return -change.data_bytes, cut


def split_at(t: Transaction, ino: int, offset: int) -> None:
    """Cut the extent that straddles `offset`, so that one starts exactly there."""
    for (_, off), raw in t.scan(Tree.EXTENTS, (ino, 0), (ino, offset), reverse=True):
        ext = Extent.decode(raw)
        if off + ext.length > offset:
            head = offset - off
            t.put(Tree.EXTENTS, (ino, off), extents.piece(ext, 0, head).encode())
            t.put(Tree.EXTENTS, (ino, offset), extents.piece(ext, head, ext.length - head).encode())
        return


def shift_down(t: Transaction, ino: int, start: int, by: int, limit: int) -> int | None:
    """Move extents starting at or after `start` down by `by` bytes, lowest first.

    The caller guarantees [start - by, start) holds no extent.  Returns the
    offset the next step starts from, or None when no extent was left.
    """
    batch = list(itertools.islice(t.scan(Tree.EXTENTS, (ino, start), (ino + 1, 0)), limit + 1))
    for (_, off), raw in batch[:limit]:
        t.delete(Tree.EXTENTS, (ino, off))
        t.put(Tree.EXTENTS, (ino, off - by), raw)
    return batch[limit][0][1] if len(batch) > limit else None


def shift_up(t: Transaction, ino: int, start: int, below: int | None, by: int, limit: int) -> int | None:
    """Move extents starting in [start, below) up by `by` bytes, highest first.

    `below` None means the end of the file.  Extents at or above `below`
    have been moved already.  Returns the next `below`, or None when done.
    """
    stop = (ino, below) if below is not None else (ino + 1, 0)
    batch = list(itertools.islice(t.scan(Tree.EXTENTS, (ino, start), stop, reverse=True), limit + 1))
    for (_, off), raw in batch[:limit]:
        t.delete(Tree.EXTENTS, (ino, off))
        t.put(Tree.EXTENTS, (ino, off + by), raw)
    return batch[limit][0][1] + 1 if len(batch) > limit else None


def count_extents(t: Transaction, ino: int, start: int, end: int | None, upto: int) -> int:
    """How many extents start in [start, end), counting no further than `upto`."""
    stop = (ino, end) if end is not None else (ino + 1, 0)
    n = 0
    for _ in t.scan(Tree.EXTENTS, (ino, start), stop):
        n += 1
        if n >= upto:
            break
    return n

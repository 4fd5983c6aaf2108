"""Bucket space: which buckets are free, open, or holding data or btree nodes.

`BucketSpace` is the in-memory mirror of the alloc btree.  The alloc btree is
the truth (its keys `(bucket,)` hold live bytes, kind and generation and are
updated in the same transaction as the references that start or stop using
the bucket); the mirror is fed by `KeyState.apply_keys` and by the
checkpoint's own alloc updates, so commit, replay and checkpoint all keep it
in step without special code.  `adjusted_usage` is the rule a transaction
follows to change a bucket's count.

Promises (DESIGN.md invariant 3; tests/test_space.py):
- A bucket whose live count dropped to zero in the transaction or checkpoint
  with seq S is handed out again only once S is durable (`free_after`).
- Data and btree nodes are bump-allocated from one open bucket per kind; a
  bucket with live bytes is never reopened, so live regions are never
  overwritten.  Data regions never cross a bucket boundary.
- Data allocations stop with ENOSPC while `reserve` free buckets remain, so a
  checkpoint can always find room for the nodes it must write.
- A pinned bucket (holding an out-of-line key list that replay may still
  read) is never handed out, whatever its count, until `release_pins(seq)`
  at the next checkpoint; then it waits for that checkpoint's seq.
"""

from __future__ import annotations

import errno
from array import array
from dataclasses import dataclass

from ..format.records import AllocInfo, BucketKind
from ..format.superblock import Superblock


def adjusted_usage(info: AllocInfo, delta: int, kind: BucketKind) -> AllocInfo:
    """The alloc value of a bucket after `delta` live bytes of `kind` start (or stop) using it.

    A bucket that goes from empty to used gets a new generation, so a stale
    pointer into its previous life can be told apart.
    """
    live = info.live_bytes + delta
    if live < 0:
        raise ValueError(f"bucket live count would drop below zero ({info.live_bytes} {delta:+})")
    if live == 0:
        return AllocInfo(0, BucketKind.FREE, info.gen)
    if info.live_bytes == 0:
        return AllocInfo(live, kind, info.gen + 1)
    if info.kind != kind:
        raise ValueError(f"bucket holds {info.kind.name} but {kind.name} was added")
    return AllocInfo(live, kind, info.gen)


class NoSpace(OSError):
    def __init__(self, message: str = "no free space left on the image") -> None:
        super().__init__(errno.ENOSPC, message)


@dataclass
class OpenBucket:
    bucket: int
    next_offset: int  # bytes already handed out from the start of the bucket


class BucketSpace:
    def __init__(self, sb: Superblock, reserve: int | None = None) -> None:
        self.sb = sb
        n = sb.nbuckets
        self.live = array("q", bytes(8 * n))
        self.kind = array("b", bytes(n))
        self.gen = array("q", bytes(8 * n))
        self.free_after = array("q", bytes(8 * n))
        self.open: dict[BucketKind, OpenBucket] = {}
        self.reserve = reserve if reserve is not None else max(2, min(n // 16, 64))
        self._scan_from = 0
        self.empty = n  # buckets whose live count is zero (free, open, or awaiting durability)
        self.pinned: set[int] = set()

    # -- mirror of the alloc btree ---------------------------------------

    def apply(self, bucket: int, info: AllocInfo | None, seq: int) -> None:
        """Record the new alloc value of `bucket`, written by the entry with `seq`."""
        if not 0 <= bucket < self.sb.nbuckets:
            return
        was_live = self.live[bucket] > 0
        if info is None or info.live_bytes == 0:
            self.empty += was_live
        elif not was_live:
            self.empty -= 1
        if info is None:
            self.live[bucket] = 0
            self.kind[bucket] = 0
        else:
            self.live[bucket] = info.live_bytes
            self.kind[bucket] = int(info.kind)
            self.gen[bucket] = info.gen
        if was_live and self.live[bucket] == 0:
            self.free_after[bucket] = seq

    def info(self, bucket: int) -> AllocInfo:
        return AllocInfo(self.live[bucket], BucketKind(self.kind[bucket]), self.gen[bucket])

    # -- handing out space -------------------------------------------------

    def is_free(self, bucket: int, durable_seq: int) -> bool:
        return (
            self.live[bucket] == 0
            and bucket not in self.pinned
            and self.free_after[bucket] <= durable_seq
            and all(ob.bucket != bucket for ob in self.open.values())
        )

    def free_count(self, durable_seq: int) -> int:
        return sum(1 for b in range(self.sb.nbuckets) if self.is_free(b, durable_seq))

    def allocate(self, kind: BucketKind, nbytes: int, durable_seq: int, next_seq: int) -> int:
        """Device address of `nbytes` fresh bytes in a bucket of `kind`; NoSpace if none.

        `next_seq` is the seq the caller's transaction will get.  The space is
        not counted until that transaction commits, so a bucket given up while
        still empty stays blocked until a transaction from `next_seq` on is
        durable: by then the caller has committed (its count keeps the bucket)
        or aborted (nothing refers to the bucket).
        """
        size = self.sb.bucket_size
        if nbytes <= 0 or nbytes > size:
            raise ValueError(f"cannot allocate {nbytes} bytes from {size}-byte buckets")
        ob = self.open.get(kind)
        if ob is None or ob.next_offset + nbytes > size:
            if ob is not None and self.live[ob.bucket] == 0:
                self.free_after[ob.bucket] = max(self.free_after[ob.bucket], next_seq)
            ob = self._open_new(kind, durable_seq)
        addr = self.sb.bucket_start(ob.bucket) + ob.next_offset
        # Keep every allocation block aligned: regions never share a block.
        ob.next_offset += nbytes + (-nbytes % self.sb.block_size)
        return addr

    def _open_new(self, kind: BucketKind, durable_seq: int) -> OpenBucket:
        self.open.pop(kind, None)
        n = self.sb.nbuckets
        keep = self.reserve if kind == BucketKind.DATA else 0
        # `empty` also counts buckets whose emptying is not durable yet: a
        # checkpoint makes those durable before it allocates nodes.
        if keep and self.empty - len(self.open) <= keep:
            raise NoSpace()
        for step in range(n):
            b = (self._scan_from + step) % n
            if self.is_free(b, durable_seq):
                self._scan_from = (b + 1) % n
                ob = OpenBucket(b, 0)
                self.open[kind] = ob
                return ob
        raise NoSpace()

    def pin(self, bucket: int) -> None:
        """Keep `bucket` from being handed out until the next `release_pins`."""
        if 0 <= bucket < self.sb.nbuckets:
            self.pinned.add(bucket)

    def release_pins(self, seq: int) -> None:
        """The checkpoint with `seq` no longer needs the pinned buckets: free once `seq` may be reused."""
        for bucket in self.pinned:
            self.free_after[bucket] = max(self.free_after[bucket], seq)
        self.pinned.clear()

    def close_open(self) -> None:
        """Forget the open buckets (their unused tails are lost until the bucket empties)."""
        self.open.clear()

    def totals(self, durable_seq: int) -> dict[str, int]:
        data = sum(1 for b in range(self.sb.nbuckets) if self.live[b] and self.kind[b] == BucketKind.DATA)
        btree = sum(1 for b in range(self.sb.nbuckets) if self.live[b] and self.kind[b] == BucketKind.BTREE)
        return {
            "buckets": self.sb.nbuckets,
            "buckets_free": self.free_count(durable_seq),
            "buckets_data": data,
            "buckets_btree": btree,
            "live_bytes": sum(self.live),
            "reserve_buckets": self.reserve,
        }

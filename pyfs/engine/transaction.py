"""Transactions: a read-your-writes overlay of key updates, committed as one entry.

Promises (DESIGN.md invariant 1):
- Reads (`get`, `scan`) see the btrees as of the transaction's start plus the
  transaction's own puts and deletes.
- `commit` hands the whole key list to the engine, which appends it as
  exactly one journal entry and applies it; nothing is visible to others
  before that, and an exception inside `with engine.transaction()` aborts
  without a trace.
- Every key and value is checked against the btree limits at `put`, so a
  committed entry can always be replayed.
- `adjust_bucket_usage` changes a bucket's alloc key in the same transaction
  as the extents that start or stop using it (invariant 3's accounting).

Proven by tests/test_engine.py.

Transactions are synchronous: the engine is single-threaded between awaits,
so a transaction is isolated by construction.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Protocol

from .alloc import adjusted_usage
from ..format.keys import Key, decode_key, encode_key, prefix_end
from ..format.records import AllocInfo, BucketKind, Tree


class KeySource(Protocol):
    """What a transaction reads through: the engine's committed state."""

    def read(self, tree: int, key: bytes) -> bytes | None: ...

    def scan(self, tree: int, start: bytes, end: bytes | None, reverse: bool) -> Iterator[tuple[bytes, bytes]]: ...

    def check_entry(self, tree: int, key: bytes, value: bytes) -> None: ...

    def bucket_of(self, addr: int) -> int: ...


class TransactionClosed(RuntimeError):
    pass


class Transaction:
    def __init__(self, source: KeySource, commit: Callable[..., int]) -> None:
        self._source = source
        self._commit = commit
        self._updates: dict[tuple[int, bytes], bytes | None] = {}
        self._sorted: dict[int, list[bytes]] = {}  # per tree, sorted updated keys (built lazily)
        self.closed = False
        self.seq: int | None = None

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> "Transaction":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.closed:
            self.commit()
        else:
            self.abort()

    # -- reads ---------------------------------------------------------------

    def get_raw(self, tree: int, key: bytes) -> bytes | None:
        self._check_open()
        k = (tree, key)
        if k in self._updates:
            return self._updates[k]
        return self._source.read(tree, key)

    def get(self, tree: int, key: Key) -> bytes | None:
        return self.get_raw(tree, encode_key(key))

    def scan_raw(
        self, tree: int, start: bytes = b"", end: bytes | None = None, reverse: bool = False
    ) -> Iterator[tuple[bytes, bytes]]:
        """Committed entries merged with this transaction's updates, in key order."""
        self._check_open()
        mine = self._overlay_keys(tree, start, end)
        if reverse:
            mine.reverse()
        base = self._source.scan(tree, start, end, reverse)
        before = (lambda a, b: a > b) if reverse else (lambda a, b: a < b)
        i = 0
        for key, value in base:
            while i < len(mine) and before(mine[i], key):
                own = self._updates[(tree, mine[i])]
                if own is not None:
                    yield mine[i], own
                i += 1
            if i < len(mine) and mine[i] == key:
                own = self._updates[(tree, key)]
                if own is not None:
                    yield key, own
                i += 1
                continue
            yield key, value
        for k in mine[i:]:
            own = self._updates[(tree, k)]
            if own is not None:
                yield k, own

    def scan(
        self,
        tree: int,
        start: Key | None = None,
        end: Key | None = None,
        *,
        prefix: Key | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[Key, bytes]]:
        """(key, value) pairs with start <= key < end, or all keys starting with `prefix`."""
        lo = encode_key(start) if start is not None else b""
        hi = encode_key(end) if end is not None else None
        if prefix is not None:
            p = encode_key(prefix)
            lo = max(lo, p)
            pend = prefix_end(prefix)
            hi = pend if hi is None else min(hi, pend)
        for k, v in self.scan_raw(tree, lo, hi, reverse):
            yield decode_key(k), v

    def _overlay_keys(self, tree: int, start: bytes, end: bytes | None) -> list[bytes]:
        keys = self._sorted.get(tree)
        if keys is None:
            keys = sorted(k for t, k in self._updates if t == tree)
            self._sorted[tree] = keys
        i = bisect_left(keys, start)
        j = len(keys) if end is None else bisect_left(keys, end)
        return keys[i:j]

    # -- writes --------------------------------------------------------------

    def put_raw(self, tree: int, key: bytes, value: bytes) -> None:
        self._check_open()
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError("values are bytes; encode records first")
        value = bytes(value)
        self._source.check_entry(tree, key, value)
        self._set(tree, key, value)

    def put(self, tree: int, key: Key, value: bytes) -> None:
        self.put_raw(tree, encode_key(key), value)

    def delete_raw(self, tree: int, key: bytes) -> None:
        self._check_open()
        self._source.check_entry(tree, key, b"")
        self._set(tree, key, None)

    def delete(self, tree: int, key: Key) -> None:
        self.delete_raw(tree, encode_key(key))

    def _set(self, tree: int, key: bytes, value: bytes | None) -> None:
        k = (tree, key)
        if k not in self._updates:
            self._sorted.pop(tree, None)
        self._updates[k] = value

    def adjust_bucket_usage(self, addr: int, delta: int, kind: BucketKind = BucketKind.DATA) -> AllocInfo:
        """Add `delta` live bytes to the bucket holding `addr`, in this transaction."""
        bucket = self._source.bucket_of(addr)
        raw = self.get(Tree.ALLOC, (bucket,))
        info = AllocInfo.decode(raw) if raw is not None else AllocInfo(0, BucketKind.FREE, 0)
        new = adjusted_usage(info, delta, kind)
        self.put(Tree.ALLOC, (bucket,), new.encode())
        return new

    # -- ending ----------------------------------------------------------------

    @property
    def updates(self) -> list[tuple[int, bytes, bytes | None]]:
        return [(tree, key, value) for (tree, key), value in self._updates.items()]

    def commit(self, max_bytes: int | None = None) -> int | None:
        """Commit as one journal entry, whatever its size; returns its seq (None if nothing changed).

        E2BIG only when the key list exceeds `max_bytes` (or the engine's
        `txn_max_bytes`); a big key list goes out of line (docs/format.md).
        """
        self._check_open()
        self.closed = True
        if not self._updates:
            return None
        if max_bytes is None:
            self.seq = self._commit(self.updates)
        else:
            self.seq = self._commit(self.updates, max_bytes=max_bytes)
        return self.seq

    def abort(self) -> None:
        self.closed = True
        self._updates.clear()

    def _check_open(self) -> None:
        if self.closed:
            raise TransactionClosed("transaction already committed or aborted")


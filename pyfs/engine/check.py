"""The engine checker: structural consistency of an image, as a list of problems.

Checks (the storage-level part of fsck; pyfs/fsck adds the filesystem checks):
- the superblock (a damaged primary is reported), the journal chain (by
  opening the image read-only, which scans and replays it in memory);
- every btree node: checksum against its parent pointer, tree id and level,
  strictly ordered keys inside the bounds its parent gives, interior nodes
  with children, all leaves at the same depth, no node over capacity;
- keys that decode, alloc values and extents that decode, logged-op keys
  that are well formed;
- space: every bucket's live count and kind equal the references recomputed
  from btree nodes and extents; no byte referenced twice; no data region
  crossing a bucket.

Promise (DESIGN.md invariants 3, 5 and 9; tests/test_check.py):
`check_image` and `check_engine` never raise on a corrupt image and never
write to it; every finding is a `Problem`.  An image is healthy iff the
list is empty.

fsck hook: `walk_tree` runs only the structural checks of one btree and
hands every node it reads to a `TreeVisitor`, so fsck reads each node once
and does the key, value and space checks on its own copy of the keys.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from .btree import BTree
from .node_store import Node, Ptr
from .device import Device
from .engine import Engine, EngineOptions
from ..format.errors import FormatError
from ..format.keys import decode_key
from ..format.records import NODE_TREES, AllocInfo, BucketKind, Extent, LoggedOp, Tree
from ..format.superblock import Superblock
from .superblock_io import read_superblock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    kind: str      # short machine-readable class, e.g. "node-checksum", "bucket-count"
    where: str     # e.g. "extents node 0x1234000", "bucket 17"
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.kind}]"


@dataclass
class SpaceUse:
    live: int = 0
    kinds: set[BucketKind] | None = None


def check_image(device: Device) -> list[Problem]:
    """Open `device` read-only (replaying in memory) and check it; the caller closes the device."""
    problems: list[Problem] = []
    try:
        _, notes = read_superblock(device)
        for note in notes:
            problems.append(Problem("superblock", "superblock", note))
        engine = Engine.open(device, EngineOptions(read_only=True))
    except (FormatError, OSError) as exc:
        problems.append(Problem("open", "image", str(exc)))
        return problems
    except Exception as exc:  # a checker reports, it does not crash
        log.exception("unexpected error opening the image")
        problems.append(Problem("open", "image", f"unexpected error: {exc!r}"))
        return problems
    problems.extend(check_engine(engine))
    return problems


class TreeVisitor(Protocol):
    """Receives what `walk_tree` reads: every node that loaded, and every leaf's entries."""

    def node(self, tree_id: int, addr: int, level: int) -> None: ...

    def leaf(self, tree_id: int, keys: list[bytes], values: list[bytes]) -> None: ...


def walk_tree(sb: Superblock, tree: BTree, visitor: TreeVisitor) -> list[Problem]:
    """The structural checks of one btree (nodes, order, ranges, depth, key count), no value checks."""
    checker = _Checker(None, sb=sb, visitor=visitor)
    checker.check_tree(tree)
    return checker.problems


def check_engine(engine: Engine) -> list[Problem]:
    """Check an open engine's btrees and space accounting (its in-memory state included)."""
    checker = _Checker(engine)
    try:
        checker.run()
    except Exception as exc:
        log.exception("checker stopped early")
        checker.problems.append(Problem("internal", "checker", f"stopped early: {exc!r}"))
    return checker.problems


class _Checker:
    def __init__(self, engine: Engine | None, sb: Superblock | None = None, visitor: TreeVisitor | None = None) -> None:
        self.engine = engine  # type: ignore[assignment]
        self.sb = engine.sb if engine is not None else sb
        self.visitor = visitor
        self.problems: list[Problem] = []
        self.use: dict[int, dict[BucketKind, int]] = {}
        self.ranges: list[tuple[int, int, str]] = []

    def report(self, kind: str, where: str, message: str) -> None:
        self.problems.append(Problem(kind, where, message))

    def run(self) -> None:
        # Engine notes (a torn tail dropped at open) describe a normal crash,
        # not damage: they are not problems.
        for tree_id in NODE_TREES:
            self.check_tree(self.engine.trees[tree_id])
        for addr in self.engine.store.freed:
            self.count_node(addr, "replaced node awaiting checkpoint")
        self.check_logged_ops()
        self.check_space()

    # -- btrees ----------------------------------------------------------------

    def check_tree(self, tree: BTree) -> None:
        name = Tree(tree.tree_id).name.lower()
        store = tree.store
        nkeys = 0
        leaf_depths: set[int] = set()
        # (node ref, expected level, lower bound, upper bound, depth)
        stack: list[tuple[Ptr | Node, int, bytes, bytes | None, int]] = [(tree.root, tree.root_level, b"", None, 0)]
        while stack:
            ref, level, lo, hi, depth = stack.pop()
            where = f"{name} node {ref.addr:#x}" if isinstance(ref, Ptr) else f"{name} dirty node"
            if isinstance(ref, Ptr):
                try:
                    node = store.load(ref, tree.tree_id, level)
                except (FormatError, OSError) as exc:
                    self.report("node", where, str(exc))
                    continue
                self.count_node(ref.addr, where)
                if self.visitor is not None:
                    self.visitor.node(tree.tree_id, ref.addr, level)
            else:
                node = ref
                if node.level != level:
                    self.report("node-level", where, f"level {node.level}, expected {level}")
                    continue
            if node.nbytes > store.capacity:
                self.report("node-size", where, f"{node.nbytes} bytes exceeds capacity {store.capacity}")
            keys = node.keys
            for a, b in zip(keys, keys[1:]):
                if a >= b:
                    self.report("key-order", where, f"keys out of order: {a!r} >= {b!r}")
                    break
            if keys and (keys[0] < lo or (hi is not None and keys[-1] >= hi)):
                self.report("key-range", where, f"keys outside the parent's range [{lo!r}, {hi!r})")
            if node.level == 0:
                leaf_depths.add(depth)
                nkeys += len(keys)
                if not keys and depth > 0:
                    self.report("empty-node", where, "empty leaf below the root")
                if self.visitor is not None:
                    self.visitor.leaf(tree.tree_id, keys, node.vals)
                    continue
                for k, v in zip(keys, node.vals):
                    self.check_entry(tree.tree_id, k, v, where)
                continue
            if not keys:
                self.report("empty-node", where, "interior node without children")
                continue
            if keys[0] != lo:
                self.report("key-range", where, f"first bound {keys[0]!r} differs from the parent's {lo!r}")
            for i, child in enumerate(node.vals):
                child_hi = keys[i + 1] if i + 1 < len(keys) else hi
                stack.append((child, level - 1, keys[i], child_hi, depth + 1))
        if len(leaf_depths) > 1:
            self.report("depth", name, f"leaves at different depths {sorted(leaf_depths)}")
        if nkeys != tree.nkeys:
            self.report("key-count", name, f"{nkeys} keys found, root record says {tree.nkeys}")

    def check_entry(self, tree_id: int, key: bytes, value: bytes, where: str) -> None:
        try:
            decoded = decode_key(key)
        except FormatError as exc:
            self.report("key", where, f"undecodable key {key!r}: {exc}")
            return
        try:
            if tree_id == Tree.ALLOC:
                if len(decoded) != 1 or not isinstance(decoded[0], int) or not 0 <= decoded[0] < self.sb.nbuckets:
                    self.report("alloc-key", where, f"alloc key {decoded!r} is not a bucket number")
                AllocInfo.decode(value)
            elif tree_id == Tree.EXTENTS:
                self.count_extent(decoded, Extent.decode(value), where)
        except FormatError as exc:
            self.report("value", where, f"key {decoded!r}: {exc}")

    # -- space -----------------------------------------------------------------

    def _add_use(self, addr: int, length: int, kind: BucketKind, what: str) -> None:
        sb = self.sb
        first = sb.bucket_offset
        end = first + sb.nbuckets * sb.bucket_size
        if addr < first or addr + length > end:
            self.report("address", what, f"range {addr:#x}+{length} lies outside the bucket area")
            return
        bucket = sb.bucket_of(addr)
        if sb.bucket_of(addr + length - 1) != bucket:
            self.report("address", what, f"range {addr:#x}+{length} crosses a bucket boundary")
        per_kind = self.use.setdefault(bucket, {})
        per_kind[kind] = per_kind.get(kind, 0) + length
        self.ranges.append((addr, addr + length, what))

    def count_node(self, addr: int, where: str) -> None:
        self._add_use(addr, self.sb.node_size, BucketKind.BTREE, where)

    def count_extent(self, key: tuple, ext: Extent, where: str) -> None:
        if ext.inline is not None:
            return
        self._add_use(ext.addr, ext.length, BucketKind.DATA, f"extent {key!r} in {where}")

    def check_space(self) -> None:
        alloc: dict[int, AllocInfo] = {}
        for key, raw in _safe_scan(self.engine.trees[Tree.ALLOC]):
            try:
                (bucket,) = decode_key(key)
                alloc[bucket] = AllocInfo.decode(raw)
            except (FormatError, ValueError, TypeError):
                continue  # already reported by the tree walk
        for bucket in sorted(set(alloc) | set(self.use)):
            info = alloc.get(bucket, AllocInfo(0, BucketKind.FREE, 0))
            per_kind = self.use.get(bucket, {})
            live = sum(per_kind.values())
            where = f"bucket {bucket}"
            if len(per_kind) > 1:
                self.report("bucket-kind", where, "holds both data and btree nodes")
            if live != info.live_bytes:
                self.report("bucket-count", where, f"alloc says {info.live_bytes} live bytes, references add up to {live}")
            elif per_kind and info.kind not in per_kind:
                self.report("bucket-kind", where, f"alloc says {info.kind.name}, references are {[k.name for k in per_kind]}")
            if not live and info.kind != BucketKind.FREE:
                self.report("bucket-kind", where, f"empty bucket marked {info.kind.name}")
            mirror = self.engine.space.info(bucket) if 0 <= bucket < self.sb.nbuckets else None
            if mirror is not None and mirror.live_bytes != info.live_bytes:
                self.report("bucket-mirror", where, f"in-memory count {mirror.live_bytes} differs from alloc key {info.live_bytes}")
        self.ranges.sort()
        for (a0, a1, w0), (b0, b1, w1) in zip(self.ranges, self.ranges[1:]):
            if b0 < a1:
                self.report("double-reference", f"{b0:#x}", f"referenced by both {w0} and {w1}")

    # -- logged operations -----------------------------------------------------

    def check_logged_ops(self) -> None:
        for key, raw in self.engine.logged_ops.items():
            where = f"logged op {key!r}"
            try:
                decode_key(key)
                LoggedOp.decode(raw)
            except FormatError as exc:
                self.report("logged-op", where, str(exc))


def _safe_scan(tree: BTree) -> Iterator[tuple[bytes, bytes]]:
    try:
        yield from tree.scan()
    except (FormatError, OSError):
        return

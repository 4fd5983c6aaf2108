"""Replay at open: the key state of the newest checkpoint plus every entry chained after it.

Promises (DESIGN.md invariants 1 and 2):
- `replay` loads the btree roots and the logged-op keys named by the
  checkpoint that `journal_scan` chose, feeds the bucket mirror from the alloc
  btree, then re-inserts the keys of each following entry, in seq order,
  through `KeyState.apply_keys`: the path every commit takes.  There is no
  operation-specific replay code, and the state is the one after a prefix
  of the committed transactions (tests/test_crash.py).
- Nothing is written here: the fresh checkpoint that seals a replay is the
  engine's to write (`Engine.open`).

fsck hooks (`OpenRepair`, used by pyfs/fsck/repair.py and proven by
tests/test_fsck.py): damaged btrees are replaced by fresh ones holding the
entries fsck could read, replay stops before an entry that cannot be
replayed, and bucket counts are corrected before the first checkpoint can
allocate from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .btree import BTree
from .journal_scan import ScanResult
from .key_state import KeyState
from .node_store import NodeStore, Ptr
from ..format.errors import FormatError
from ..format.keys import decode_key, encode_key
from ..format.records import NODE_TREES, AllocInfo, Tree


@dataclass
class OpenRepair:
    """What fsck changes while it opens an image for repair (see `Engine.open`).

    - `rebuild`: btrees to replace by a fresh tree holding these (key, value)
      entries, the ones still readable in the checkpoint's damaged tree;
      replay then applies the journal on top as usual.
    - `replay_until`: replay stops before the entry with this seq.
    - `alloc`: alloc values applied after replay and before the first
      checkpoint, so that it never allocates from a bucket that is in use.
    - `scan`: the journal scan fsck already made of this device (nothing
      was written since), so the open need not read the journal again.
    All of it reaches the disk only with the checkpoint that ends the open.
    """

    rebuild: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    replay_until: int | None = None
    alloc: dict[int, AllocInfo] = field(default_factory=dict)
    scan: ScanResult | None = None


def replay(keys: KeyState, scan: ScanResult, repair: OpenRepair | None, notes: list[str]) -> int:
    """Fill the empty `keys` from the checkpoint and the chain of `scan`; returns the entries replayed.

    Anything odd but survivable (a rebuilt tree dropping an entry) is added to `notes`.
    """
    ckpt = scan.checkpoint
    roots = ckpt.roots or {}
    for tree in NODE_TREES:
        if repair is not None and tree in repair.rebuild:
            keys.trees[tree] = rebuilt_tree(keys.store, tree, repair.rebuild[tree], notes)
            continue
        root = roots.get(int(tree))
        if root is None:
            raise FormatError(f"checkpoint {ckpt.seq} has no root for btree {tree.name}")
        keys.trees[tree] = BTree(tree, keys.store, Ptr(root.addr, root.csum), root.level, root.nkeys)
    keys.logged_ops = dict(ckpt.logged_ops or [])
    for key, raw in keys.trees[Tree.ALLOC].scan():
        (bucket,) = decode_key(key)
        keys.space.apply(bucket, AllocInfo.decode(raw), 0)
    replayed = 0
    for loc in scan.chain[1:]:
        if repair is not None and repair.replay_until is not None and loc.entry.seq >= repair.replay_until:
            break
        keys.apply_keys(loc.keys(), loc.entry.seq)
        replayed += 1
    for loc in scan.chain:
        loc.source = None  # the region bytes are not needed after replay
    if repair is not None and repair.alloc:
        keys.apply_keys(
            [(Tree.ALLOC, encode_key((b,)), info.encode()) for b, info in sorted(repair.alloc.items())],
            scan.last_seq,
        )
    return replayed


def rebuilt_tree(store: NodeStore, tree: int, entries: list[tuple[bytes, bytes]], notes: list[str]) -> BTree:
    """A fresh in-memory btree holding `entries` (fsck's rebuild of a damaged tree)."""
    fresh = BTree.empty(tree, store)
    for key, value in sorted(entries):
        try:
            fresh.insert(key, value)
        except ValueError as exc:  # an entry no node can hold: it cannot be kept
            notes.append(f"rebuilding btree {Tree(tree).name}: dropped key {key!r}: {exc}")
    return fresh

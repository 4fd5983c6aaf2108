"""Checkpoints: every dirty btree node to fresh space, then one entry naming the new roots.

`Checkpointer.write` runs one checkpoint of an open image.  The engine
decides when (the journal half full, too many dirty nodes, close, the end of
an open that replayed something); this module decides how.

Promises (DESIGN.md invariants 3, 4 and 7; tests/test_engine.py and
tests/test_crash.py prove them):
- Space emptied by committed transactions is made durable before any node
  is allocated, so a node never lands in a bucket whose emptying could still
  be lost.
- Every dirty node gets an address in a btree bucket, and the alloc btree
  records, under the checkpoint's own seq, the space taken by the nodes
  written and released by the nodes they replace.  That space is therefore
  handed out again only once the checkpoint entry is durable (invariant 3).
- Nodes are written children before parents, then the device is flushed,
  and only then is the checkpoint entry appended and flushed: no entry names
  a node that is not on disk (invariant 4).
- The entry carries the roots of every btree and every live logged-op key,
  so reclaiming the journal before it never loses an unfinished long
  operation (invariant 7).
- Out-of-line key lists written since the last checkpoint are released
  with this one's seq: their space is reused only once it may be.
- A failed write or flush, or no room left for the nodes, turns the engine
  read-only (EIO, resp. ENOSPC) and the checkpoint does not count.
"""

from __future__ import annotations

import errno

from .alloc import NoSpace
from .device import Device
from .durability import Durability
from .journal_writer import JournalWriter
from .key_state import KeyState
from .node_store import Node
from ..format.errors import FormatError
from ..format.journal_entry import FLAG_CHECKPOINT, FLAG_CLEAN, RootPtr
from ..format.keys import encode_key
from ..format.node import encode_node
from ..format.records import AllocInfo, BucketKind, Tree


class Checkpointer:
    """Writes the checkpoints of one open image; see the module docstring."""

    def __init__(self, keys: KeyState, journal: JournalWriter, durability: Durability, device: Device, seed: int) -> None:
        self.keys = keys
        self.journal = journal
        self.durability = durability
        self.device = device
        self.seed = seed

    def write(self, clean: bool = False) -> int:
        """Write all dirty nodes and commit a checkpoint entry (flagged CLEAN if `clean`); returns its seq."""
        with self.durability.io_lock:
            try:
                return self._write_locked(clean)
            except NoSpace:
                self.durability.fail(OSError(errno.ENOSPC, "no space left for btree nodes at checkpoint"))
                raise

    def _write_locked(self, clean: bool) -> int:
        journal = self.journal
        # Space emptied by committed transactions is usable for nodes only
        # once they are durable: make them so first.
        self.durability.flush_locked()
        self.durability.prove_locked()
        seq = journal.next_seq  # the checkpoint entry's seq: nothing else appends meanwhile
        self._place_nodes(seq)
        roots = self._write_nodes()
        # The checkpoint entry, written after the nodes it names.
        flags = FLAG_CHECKPOINT | (FLAG_CLEAN if clean else 0)
        entry = journal.append(
            {"flags": flags, "roots": roots, "logged_ops": sorted(self.keys.logged_ops.items())}, checkpoint=True
        )
        assert entry.seq == seq
        # Out-of-line key lists of the entries before it are dead once it is.
        self.keys.space.release_pins(seq)
        self.durability.flush_locked()
        return seq

    def _place_nodes(self, seq: int) -> None:
        """Give every dirty node an address and record the space taken and freed in the alloc btree.

        Recording the space dirties alloc nodes, which need addresses too:
        repeat until nothing new appears (alloc keys are only ever updated,
        never deleted, so no node merges away during the loop).
        """
        keys = self.keys
        sb = keys.sb
        space = keys.space
        alloc = keys.trees[Tree.ALLOC]
        durable_seq = self.journal.reusable_seq
        while True:
            fresh = [n for t in keys.trees.values() for n in t.dirty_nodes() if n.new_addr is None]
            freed, keys.store.freed = keys.store.freed, []
            if not fresh and not freed:
                return
            delta: dict[int, int] = {}
            for node in fresh:
                node.new_addr = space.allocate(BucketKind.BTREE, sb.node_size, durable_seq, seq)
                b = sb.bucket_of(node.new_addr)
                delta[b] = delta.get(b, 0) + sb.node_size
            for addr in freed:
                b = sb.bucket_of(addr)
                delta[b] = delta.get(b, 0) - sb.node_size
            for b, d in sorted(delta.items()):
                if d == 0:
                    continue
                info = space.info(b)
                live = info.live_bytes + d
                if live < 0:
                    raise FormatError(f"bucket {b}: btree live count would drop below zero")
                gen = info.gen + 1 if info.live_bytes == 0 and live > 0 else info.gen
                new = AllocInfo(live, BucketKind.BTREE if live else BucketKind.FREE, gen)
                alloc.insert(encode_key((b,)), new.encode())
                space.apply(b, new, seq)

    def _write_nodes(self) -> dict[int, RootPtr]:
        """Write every dirty node, children before parents, and flush; returns the new roots."""
        roots: dict[int, RootPtr] = {}
        try:
            for tree_id, tree in self.keys.trees.items():
                addr, csum = tree.write_dirty(lambda node, t=tree_id: self._write_node(t, node))
                roots[int(tree_id)] = RootPtr(addr, csum, tree.root_level, tree.nkeys)
            self.durability.flush_device()
        except OSError as exc:
            self.durability.fail(exc)
            raise OSError(errno.EIO, f"checkpoint failed: {exc}") from exc
        return roots

    def _write_node(self, tree: int, node: Node) -> int:
        assert node.new_addr is not None
        raw, csum = encode_node(tree, node.level, node.keys, node.vals, node.new_addr, self.seed)
        self.device.pwrite(node.new_addr, raw)
        return csum

"""Copy-on-write B+trees of bytes keys and bytes values, over a `NodeStore`.

Promises:
- A btree maps encoded keys (bytes, ordered lexicographically) to value bytes;
  `get`, `insert`, `delete` and `scan` behave exactly like a sorted dict
  (tests/test_btree.py checks this against a dict model).
- Copy-on-write (DESIGN.md invariant 3): a node read from disk is never
  modified on disk.  Changing it dirties every node from the root down to it
  through `NodeStore.make_dirty`, which records the old address for the
  checkpoint that writes the replacement; nothing here writes to the device.
- `dirty_nodes` lists the dirty nodes children first and `write_dirty`
  writes them in that order, each parent pointer carrying its child's
  checksum (invariant 5), so a checkpoint can put every node on disk before
  the nodes and the entry that name it (invariant 4).
- A node that fails its checksum raises `FormatError` (errno EIO) for that
  lookup and leaves the tree usable (see `node_store.py`).

Node shape: a leaf holds sorted `keys` and `vals` (value bytes).  An interior
node holds sorted `keys` where `keys[i]` is the lower bound of child `i`
(`keys[0]` is the node's own lower bound, b"" on the left edge), and `vals`
whose entries are the child `Node` while it is dirty, else its `Ptr`.
Nodes split when their encoded size passes the capacity and merge or
rebalance with a sibling when they drop below a quarter of it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator

from ..format.node import LEAF_ENTRY_OVERHEAD, PTR_BYTES
from .node_store import Node, NodeStore, Ptr

Path = list[tuple[Node, int]]  # (interior node, index of the child taken), root first


def _is_deficient(node: Node) -> bool:
    """Structurally wrong below the root: an empty leaf or an interior node with one child."""
    return len(node.keys) < (2 if node.level else 1)


class BTree:
    """One copy-on-write B+tree; its root is a dirty Node or a Ptr to a clean one."""

    def __init__(self, tree_id: int, store: NodeStore, root: Ptr | Node, root_level: int, nkeys: int) -> None:
        self.tree_id = tree_id
        self.store = store
        self.root: Ptr | Node = root
        self.root_level = root_level
        self.nkeys = nkeys

    @classmethod
    def empty(cls, tree_id: int, store: NodeStore) -> "BTree":
        return cls(tree_id, store, store.new_node(0, [], []), 0, 0)

    # -- reading ---------------------------------------------------------

    def _root_node(self) -> Node:
        root = self.root
        if isinstance(root, Node):
            return root
        return self.store.load(root, self.tree_id, self.root_level)

    def _child(self, node: Node, i: int) -> Node:
        child = node.vals[i]
        if isinstance(child, Node):
            return child
        return self.store.load(child, self.tree_id, node.level - 1)

    def _descend(self, key: bytes) -> tuple[Node, Path]:
        node = self._root_node()
        path: Path = []
        while node.level:
            i = bisect_right(node.keys, key) - 1
            path.append((node, i))
            node = self._child(node, i)
        return node, path

    def get(self, key: bytes) -> bytes | None:
        node = self._root_node()
        while node.level:
            node = self._child(node, bisect_right(node.keys, key) - 1)
        i = bisect_left(node.keys, key)
        if i < len(node.keys) and node.keys[i] == key:
            return node.vals[i]
        return None

    def _leaf_bounds(self, key: bytes | None, before: bool) -> tuple[Node, bytes, bytes | None]:
        """The leaf for `key` (with `before`: the leaf whose range starts below `key`;
        for None: the rightmost leaf) and its bounds."""
        node = self._root_node()
        lo: bytes = b""
        hi: bytes | None = None
        while node.level:
            if key is None:
                i = len(node.keys) - 1
            else:
                i = (bisect_left(node.keys, key) if before else bisect_right(node.keys, key)) - 1
                i = max(i, 0)
            lo = node.keys[i]
            if i + 1 < len(node.keys):
                hi = node.keys[i + 1]
            node = self._child(node, i)
        return node, lo, hi

    def scan(self, start: bytes = b"", end: bytes | None = None, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Entries with start <= key < end, ascending (or descending with `reverse`).

        Each leaf is found by a fresh descent, so the iterator survives cache
        evictions and changes made to the tree between leaves.
        """
        if reverse:
            yield from self._scan_reverse(start, end)
            return
        cursor = start
        while True:
            leaf, _, hi = self._leaf_bounds(cursor, before=False)
            i = bisect_left(leaf.keys, cursor)
            j = len(leaf.keys) if end is None else bisect_left(leaf.keys, end)
            batch = list(zip(leaf.keys[i:j], leaf.vals[i:j]))
            yield from batch
            if hi is None or (end is not None and hi >= end):
                return
            cursor = hi

    def _scan_reverse(self, start: bytes, end: bytes | None) -> Iterator[tuple[bytes, bytes]]:
        limit = end
        while True:
            if limit is None:
                leaf, lo, _ = self._leaf_bounds(None, before=False)
                j = len(leaf.keys)
            else:
                if limit <= start:
                    return
                leaf, lo, _ = self._leaf_bounds(limit, before=True)
                j = bisect_left(leaf.keys, limit)
            i = bisect_left(leaf.keys, start, 0, j)
            batch = list(zip(leaf.keys[i:j], leaf.vals[i:j]))
            batch.reverse()
            yield from batch
            if lo == b"" or lo <= start:
                return
            limit = lo

    # -- writing ---------------------------------------------------------

    def _dirty_path(self, leaf: Node, path: Path) -> None:
        """Turn every clean node from the root to `leaf` into a dirty one (top down)."""
        if leaf.dirty:
            return  # nodes are dirtied top down and cleaned all at once: its ancestors are dirty
        nodes = [n for n, _ in path] + [leaf]
        parent: Node | None = None
        parent_idx = 0
        for depth, node in enumerate(nodes):
            if not node.dirty:
                self.store.make_dirty(node)
                if parent is None:
                    self.root = node
                else:
                    parent.vals[parent_idx] = node
            parent = node
            if depth < len(path):
                parent_idx = path[depth][1]

    def _dirty_child(self, parent: Node, i: int) -> Node:
        child = self._child(parent, i)
        if not child.dirty:
            self.store.make_dirty(child)
            parent.vals[i] = child
        return child

    def insert(self, key: bytes, value: bytes) -> None:
        size = len(key) + len(value) + LEAF_ENTRY_OVERHEAD
        if size > self.store.max_entry:
            raise ValueError(f"key and value of {size} bytes exceed the node entry limit {self.store.max_entry}")
        leaf, path = self._descend(key)
        i = bisect_left(leaf.keys, key)
        if i < len(leaf.keys) and leaf.keys[i] == key:
            if leaf.vals[i] == value:
                return
            self._dirty_path(leaf, path)
            leaf.nbytes += len(value) - len(leaf.vals[i])
            leaf.vals[i] = value
        else:
            self._dirty_path(leaf, path)
            leaf.keys.insert(i, key)
            leaf.vals.insert(i, value)
            leaf.nbytes += size
            self.nkeys += 1
        if leaf.nbytes > self.store.capacity:
            self._split_up(leaf, path)

    def delete(self, key: bytes) -> bool:
        """Remove `key`; False if it was absent."""
        leaf, path = self._descend(key)
        i = bisect_left(leaf.keys, key)
        if i >= len(leaf.keys) or leaf.keys[i] != key:
            return False
        self._dirty_path(leaf, path)
        leaf.nbytes -= leaf.entry_size(i)
        del leaf.keys[i]
        del leaf.vals[i]
        self.nkeys -= 1
        self._rebalance_up(leaf, path)
        # A node whose only sibling path ran through a one-child parent may
        # still be empty (or an interior node may have one child): descend
        # again and repair from the deepest such node until none is left.
        for _ in range(2 * self.root_level + 2):
            leaf, path = self._descend(key)
            nodes = [n for n, _ in path] + [leaf]
            bad = [d for d in range(1, len(nodes)) if _is_deficient(nodes[d])]
            if not bad:
                break
            depth = bad[-1]
            self._rebalance_up(nodes[depth], path[:depth])
        return True

    def _split_node(self, node: Node) -> Node:
        """Move the upper half (by bytes) of `node` into a new right sibling."""
        half = node.nbytes // 2
        acc = 0
        cut = 1
        for i in range(len(node.keys)):
            acc += node.entry_size(i)
            if acc >= half:
                cut = max(1, min(i + 1, len(node.keys) - 1))
                break
        right = self.store.new_node(node.level, node.keys[cut:], node.vals[cut:])
        del node.keys[cut:]
        del node.vals[cut:]
        node.nbytes -= right.nbytes
        return right

    def _split_up(self, node: Node, path: Path) -> None:
        while node.nbytes > self.store.capacity:
            right = self._split_node(node)
            sep = right.keys[0]
            if not path:
                lower = b"" if node.level == 0 else node.keys[0]
                self.root = self.store.new_node(node.level + 1, [lower, sep], [node, right])
                self.root_level = node.level + 1
                return
            parent, idx = path.pop()
            parent.keys.insert(idx + 1, sep)
            parent.vals.insert(idx + 1, right)
            parent.nbytes += len(sep) + PTR_BYTES
            node = parent

    def _rebalance_up(self, node: Node, path: Path) -> None:
        store = self.store
        while path and (node.nbytes < store.capacity // 4 or _is_deficient(node)):
            parent, idx = path.pop()
            if len(parent.keys) < 2:
                node = parent
                continue
            if idx > 0:
                left, right, sep_idx = self._dirty_child(parent, idx - 1), node, idx
            else:
                left, right, sep_idx = node, self._dirty_child(parent, idx + 1), idx + 1
            if left.nbytes + right.nbytes <= store.capacity:
                left.keys.extend(right.keys)
                left.vals.extend(right.vals)
                left.nbytes += right.nbytes
                store.drop(right)
                del parent.keys[sep_idx]
                del parent.vals[sep_idx]
                parent.nbytes = parent.measure()
            else:
                self._redistribute(left, right)
                parent.keys[sep_idx] = right.keys[0]
                parent.nbytes = parent.measure()
            node = parent
        self._collapse_root()

    def _redistribute(self, left: Node, right: Node) -> None:
        keys = left.keys + right.keys
        vals = left.vals + right.vals
        total = left.nbytes + right.nbytes
        probe = Node(left.level, keys, vals, None, dirty=False)
        acc = 0
        cut = len(keys) // 2
        for i in range(len(keys)):
            acc += probe.entry_size(i)
            if acc >= total // 2:
                cut = max(1, min(i + 1, len(keys) - 1))
                break
        left.keys, left.vals = keys[:cut], vals[:cut]
        right.keys, right.vals = keys[cut:], vals[cut:]
        left.nbytes = left.measure()
        right.nbytes = right.measure()

    def _collapse_root(self) -> None:
        """Replace an interior root that has a single child by that child."""
        while True:
            root = self._root_node()
            if root.level == 0 or len(root.keys) != 1:
                return
            if not root.dirty:
                self.store.make_dirty(root)
            self.store.drop(root)
            self.root = root.vals[0]
            self.root_level = root.level - 1

    # -- checkpoint support ----------------------------------------------

    def dirty_nodes(self) -> list[Node]:
        """Every dirty node of this tree, children before parents."""
        out: list[Node] = []
        root = self.root
        if not isinstance(root, Node):
            return out
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                out.append(node)
                continue
            stack.append((node, True))
            if node.level:
                for child in node.vals:
                    if isinstance(child, Node):
                        stack.append((child, False))
        return out

    def write_dirty(self, write: Callable[[Node], int]) -> tuple[int, int]:
        """Write every dirty node bottom-up with `write(node) -> checksum`; return the root's (addr, csum)."""
        root = self.root
        if not isinstance(root, Node):
            return root.addr, root.csum
        csums: dict[int, int] = {}
        for node in self.dirty_nodes():
            if node.level:
                for i, child in enumerate(node.vals):
                    if isinstance(child, Node):
                        node.vals[i] = Ptr(child.addr, csums[id(child)])  # type: ignore[arg-type]
            addr = node.new_addr
            assert addr is not None, "checkpoint must assign an address to every dirty node"
            csum = write(node)
            csums[id(node)] = csum
            self.store.cleaned(node, addr)
        self.root = Ptr(root.addr, csums[id(root)])  # type: ignore[arg-type]
        return self.root.addr, self.root.csum

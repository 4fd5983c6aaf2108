"""pyfs/engine/btree.py keeps its promises, driven through the engine that owns it.

Promises proven here (from the module docstring):
- a btree behaves exactly like a sorted dict: `get`, `insert`, `delete`,
  forward and reverse `scan` with any bounds, and `nkeys`, across flushes,
  checkpoints, clean reopens and crashes (a crash keeps the state at the
  last durable seq) -- `test_btree_matches_dict_model_across_reopen`;
- structure: keys ordered inside the bounds the parent gives, interior
  `keys[0]` equal to the node's lower bound, all leaves at one depth, no node
  over capacity (nor over `node_size` once encoded), no empty leaf but the
  root, and the dirty-node count the engine's checkpoint trigger relies on
  equal to the dirty nodes actually in the trees;
- memory: the clean-node cache never holds more than `cache_nodes`, and the
  dirty set stays under the engine's `dirty_limit` after every commit;
- a scan survives changes made to the tree between the leaves it visits;
- a node whose bytes are damaged fails the lookups that need it with EIO
  (DESIGN.md invariant 5) and leaves every other lookup working.
"""

from __future__ import annotations

import errno
import random
import uuid

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pyfs.engine.btree import BTree
from pyfs.engine.node_store import Node, NodeStore, Ptr
from pyfs.engine.fault_device import FaultDevice
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.errors import FormatError
from pyfs.format.keys import encode_key
from pyfs.format.node import encode_node
from pyfs.format.records import NODE_TREES, Tree
from pyfs.format.superblock import plan_geometry

IMAGE_SIZE = 8 << 20
NODE_SIZE = 4096
TREES = (Tree.INODES, Tree.MISC)


def new_engine(options: EngineOptions | None = None, size: int = IMAGE_SIZE) -> tuple[Engine, FaultDevice]:
    sb = plan_geometry(
        size, uuid=uuid.UUID(int=0xB7EE).bytes, bucket_size=64 << 10, journal_size=256 << 10, node_size=NODE_SIZE
    )
    dev = FaultDevice(bytearray(size))
    return Engine.format(dev, sb, options), dev


def reopen(dev: FaultDevice, options: EngineOptions | None = None) -> tuple[Engine, FaultDevice]:
    """Open what the disk holds now (after a close, or as a crash would leave it)."""
    dev2 = FaultDevice(dev.durable_image())
    return Engine.open(dev2, options), dev2


def value_for(salt: int, length: int) -> bytes:
    return random.Random(salt).randbytes(length)


# -- structure -------------------------------------------------------------------


def check_tree(tree: BTree, *, fake_addr: int = 0) -> tuple[list[tuple[bytes, bytes]], int]:
    """Walk `tree` from its root, assert its structure; return its items and dirty nodes.

    Every node is encoded as a checkpoint would write it (dirty children get
    the address `fake_addr`) to prove it fits in `node_size`.
    """
    store = tree.store
    items: list[tuple[bytes, bytes]] = []
    dirty = 0
    root = tree.root
    root_node = root if isinstance(root, Node) else store.load(root, tree.tree_id, tree.root_level)
    assert root_node.level == tree.root_level
    stack: list[tuple[Node, bytes, bytes | None, bool]] = [(root_node, b"", None, True)]
    while stack:
        node, lo, hi, is_root = stack.pop()
        keys = node.keys
        where = f"tree {tree.tree_id} level {node.level}"
        assert len(keys) == len(node.vals), where
        assert all(a < b for a, b in zip(keys, keys[1:])), f"{where}: keys out of order"
        assert all(lo <= k for k in keys[:1]), f"{where}: key below the parent's bound"
        assert hi is None or all(k < hi for k in keys[-1:]), f"{where}: key at or above the next bound"
        assert node.nbytes == node.measure(), f"{where}: nbytes {node.nbytes} != measured {node.measure()}"
        assert node.nbytes <= store.capacity, f"{where}: {node.nbytes} bytes over capacity {store.capacity}"
        if node.dirty:
            dirty += 1
            assert node.addr is None
        else:
            assert node.addr is not None
            assert not node.level or all(isinstance(v, Ptr) for v in node.vals), f"{where}: clean node points at a dirty child"
        if node.level:
            assert keys, f"{where}: interior node without children"
            assert keys[0] == lo, f"{where}: keys[0] {keys[0]!r} is not the node's lower bound {lo!r}"
            ptrs = [(fake_addr, 0xFFFF_FFFF_FFFF_FFFF) if isinstance(v, Node) else (v.addr, v.csum) for v in node.vals]
        else:
            assert keys or is_root, f"{where}: empty leaf below the root"
            items.extend(zip(keys, node.vals))
            ptrs = node.vals
        raw, _ = encode_node(tree.tree_id, node.level, keys, ptrs, node.addr or fake_addr, 0)
        assert len(raw) <= store.node_size, f"{where}: encodes to {len(raw)} bytes, node size {store.node_size}"
        if node.level:
            # Push right to left so leaves come out in key order.
            for i in reversed(range(len(keys))):
                child = node.vals[i]
                if not isinstance(child, Node):
                    child = store.load(child, tree.tree_id, node.level - 1)
                assert child.level == node.level - 1, f"{where}: child at level {child.level}"
                child_hi = keys[i + 1] if i + 1 < len(keys) else hi
                stack.append((child, keys[i], child_hi, False))
    assert [k for k, _ in items] == sorted(k for k, _ in items)
    assert tree.nkeys == len(items), f"tree {tree.tree_id}: nkeys {tree.nkeys}, leaves hold {len(items)}"
    return items, dirty


def check_engine_trees(eng: Engine) -> dict[int, list[tuple[bytes, bytes]]]:
    """Check every node tree; return their items.  The dirty count must add up."""
    out = {}
    dirty = 0
    for t in NODE_TREES:
        out[t], d = check_tree(eng.trees[t], fake_addr=eng.sb.size - NODE_SIZE)
        dirty += d
    assert eng.store.dirty_count == dirty, f"store counts {eng.store.dirty_count} dirty nodes, trees hold {dirty}"
    return out


# -- the model-based test ----------------------------------------------------------

SMALL_KEYS = st.integers(0, 15).map(lambda i: (i,))
LARGE_KEYS = st.one_of(
    st.integers(-(10**9), 10**9).map(lambda i: (i,)),
    st.tuples(st.integers(0, 5), st.text("abcé\x00", max_size=12)),
)
KEYS = st.one_of(SMALL_KEYS, LARGE_KEYS)
VALUE_LENGTHS = st.one_of(st.integers(0, 40), st.integers(0, 600))
TREE_IDS = st.sampled_from(TREES)
BOUNDS = st.one_of(st.none(), KEYS.map(encode_key), st.binary(max_size=4))


class BTreeVersusDict(RuleBasedStateMachine):
    """Random writes, reads, scans, flushes, checkpoints, reopens and crashes against a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.eng, self.dev = new_engine()
        self.model: dict[tuple[int, bytes], bytes] = {}
        self.durable_model: dict[tuple[int, bytes], bytes] = {}
        self.pending: list[tuple[int, dict]] = []  # (seq, model after it) not yet durable
        self.salt = 0

    def teardown(self) -> None:
        if not self.eng.closed:
            self.eng.close()

    # -- helpers --

    def _settle(self) -> None:
        """Move the model snapshots that the journal made durable into `durable_model`."""
        durable = self.eng.journal.durable_seq
        while self.pending and self.pending[0][0] <= durable:
            self.durable_model = self.pending.pop(0)[1]

    def _commit(self, ops: list[tuple[int, tuple, int | None]]) -> None:
        with self.eng.transaction() as t:
            for tree, key, length in ops:
                k = encode_key(key)
                if length is None:
                    t.delete(tree, key)
                    self.model.pop((tree, k), None)
                else:
                    self.salt += 1
                    v = value_for(self.salt, length)
                    t.put(tree, key, v)
                    self.model[(tree, k)] = v
        assert t.seq is not None
        self.pending.append((t.seq, dict(self.model)))
        self._settle()
        assert self.eng.store.dirty_count <= self.eng.dirty_limit

    def _items(self, tree: int) -> list[tuple[bytes, bytes]]:
        return sorted((k, v) for (t, k), v in self.model.items() if t == tree)

    # -- writes --

    @rule(ops=st.lists(st.tuples(TREE_IDS, KEYS, st.one_of(st.none(), VALUE_LENGTHS)), min_size=1, max_size=12))
    def write(self, ops):
        self._commit(ops)

    @rule(
        tree=TREE_IDS,
        first=st.integers(0, 10**9),
        count=st.integers(20, 300),
        pad=st.sampled_from([0, 0, 120, 350]),
        length=VALUE_LENGTHS,
    )
    def bulk_insert(self, tree, first, count, pad, length):
        """Many keys at once; long keys (`pad`) cut the fan-out, so a few hundred make three levels."""

        def key(n: int) -> tuple:
            return (3, f"{n:010d}" + "~" * pad) if pad else (n,)

        for start in range(0, count, 50):
            self._commit([(tree, key(first + i * 7), length) for i in range(start, min(count, start + 50))])

    @precondition(lambda self: self.model)
    @rule(data=st.data(), fraction=st.floats(0.2, 1.0))
    def bulk_delete_a_range(self, data, fraction):
        keys = sorted(self.model)
        start = data.draw(st.integers(0, len(keys) - 1))
        doomed = keys[start : start + max(1, int(len(keys) * fraction))]
        for i in range(0, len(doomed), 60):
            with self.eng.transaction() as t:
                for tree, k in doomed[i : i + 60]:
                    t.delete_raw(tree, k)
                    del self.model[(tree, k)]
            self.pending.append((t.seq, dict(self.model)))
            self._settle()

    @precondition(lambda self: self.model)
    @rule(data=st.data(), length=st.one_of(st.none(), VALUE_LENGTHS))
    def overwrite_or_delete_an_existing_key(self, data, length):
        tree, k = data.draw(st.sampled_from(sorted(self.model)))
        with self.eng.transaction() as t:
            if length is None:
                t.delete_raw(tree, k)
                del self.model[(tree, k)]
            else:
                self.salt += 1
                v = value_for(self.salt, length)
                t.put_raw(tree, k, v)
                self.model[(tree, k)] = v
        self.pending.append((t.seq, dict(self.model)))
        self._settle()

    # -- reads --

    @rule(tree=TREE_IDS, key=KEYS)
    def get(self, tree, key):
        k = encode_key(key)
        assert self.eng.trees[tree].get(k) == self.model.get((tree, k))
        with self.eng.transaction() as t:
            assert t.get(tree, key) == self.model.get((tree, k))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def get_an_existing_key(self, data):
        tree, k = data.draw(st.sampled_from(sorted(self.model)))
        assert self.eng.trees[tree].get(k) == self.model[(tree, k)]

    @rule(tree=TREE_IDS, lo=BOUNDS, hi=BOUNDS, reverse=st.booleans())
    def scan(self, tree, lo, hi, reverse):
        start = lo or b""
        want = [(k, v) for k, v in self._items(tree) if k >= start and (hi is None or k < hi)]
        if reverse:
            want.reverse()
        assert list(self.eng.trees[tree].scan(start, hi, reverse)) == want

    # -- durability --

    @rule()
    def flush(self):
        self.eng.flush()
        self._settle()
        assert not self.pending

    @rule()
    def checkpoint(self):
        self.eng.checkpoint()
        self._settle()
        assert not self.pending
        assert self.eng.store.dirty_count == 0

    @rule()
    def close_and_reopen(self):
        self.eng.close()
        self.eng, self.dev = reopen(self.dev)
        assert self.eng.replayed_entries == 0
        self.durable_model = dict(self.model)
        self.pending = []

    @rule()
    def crash_and_reopen(self):
        self.eng, self.dev = reopen(self.dev)  # the old engine is simply abandoned
        self.model = dict(self.durable_model)
        self.pending = []

    @invariant()
    def trees_are_well_formed_and_equal_the_model(self):
        items = check_engine_trees(self.eng)
        for tree in TREES:
            assert items[tree] == self._items(tree)
            assert self.eng.trees[tree].nkeys == len(items[tree])


TestBTreeVersusDict = BTreeVersusDict.TestCase
TestBTreeVersusDict.settings = settings(max_examples=30, stateful_step_count=30, deadline=None)


def test_btree_matches_dict_model_across_reopen():
    """A fixed long run of the same comparison, reaching deep trees the random runs may miss."""
    rng = random.Random(7)
    eng, dev = new_engine()
    model: dict[bytes, bytes] = {}
    durable: dict[bytes, bytes] = {}
    pending: list[tuple[int, dict]] = []  # (seq, model after it) not yet durable
    for step in range(1500):
        with eng.transaction() as t:
            for _ in range(rng.randint(1, 8)):
                key = (rng.randrange(20000),)
                if rng.random() < 0.25:
                    t.delete(Tree.INODES, key)
                    model.pop(encode_key(key), None)
                else:
                    v = value_for(step * 10 + len(model), rng.choice([0, 10, 100, 300, 600]))
                    t.put(Tree.INODES, key, v)
                    model[encode_key(key)] = v
        pending.append((t.seq, dict(model)))
        roll = rng.random()
        if roll < 0.02:
            eng.flush()
        elif roll < 0.025:
            eng.close()
            eng, dev = reopen(dev)
            durable, pending = dict(model), []
        elif roll < 0.03:
            eng, dev = reopen(dev)
            model, pending = dict(durable), []
        while pending and pending[0][0] <= eng.journal.durable_seq:
            durable = pending.pop(0)[1]
        if step % 100 == 0:
            items = check_engine_trees(eng)[Tree.INODES]
            assert items == sorted(model.items())
    assert eng.trees[Tree.INODES].root_level >= 2
    items = check_engine_trees(eng)[Tree.INODES]
    assert items == sorted(model.items())
    eng.close()
    eng, dev = reopen(dev)
    assert sorted(eng.trees[Tree.INODES].scan()) == sorted(model.items())
    assert list(eng.trees[Tree.INODES].scan(reverse=True)) == sorted(model.items(), reverse=True)
    eng.close()


# -- shape -------------------------------------------------------------------------


def test_tree_grows_levels_with_small_nodes_and_collapses_back_to_one_leaf():
    eng, dev = new_engine()
    tree = eng.trees[Tree.INODES]
    keys = list(range(2000))
    random.Random(1).shuffle(keys)
    for i in range(0, len(keys), 20):
        with eng.transaction() as t:
            for k in keys[i : i + 20]:
                t.put(Tree.INODES, (k,), value_for(k, 200))
    assert tree.root_level >= 2
    check_engine_trees(eng)
    for i in range(0, len(keys), 20):
        with eng.transaction() as t:
            for k in keys[i : i + 20]:
                t.delete(Tree.INODES, (k,))
        if i % 400 == 0:
            check_engine_trees(eng)
    assert tree.nkeys == 0
    assert tree.root_level == 0
    items, _ = check_tree(tree)
    assert items == []
    eng.close()
    eng, dev = reopen(dev)
    assert list(eng.trees[Tree.INODES].scan()) == []
    eng.close()


def test_nodes_at_addresses_above_4_gib_still_fit_in_node_size():
    """An interior node's measured size must bound its encoding for every address.

    Child pointers are msgpack ints, which grow from 5 to 9 bytes once an
    address passes 4 GiB; an image that large is ordinary.
    """
    store = NodeStore(FaultDevice(bytes(NODE_SIZE)), NODE_SIZE, seed=0)
    tree = BTree.empty(Tree.INODES, store)
    high = 1 << 32
    worst = 0
    for i in range(8000):
        tree.insert(encode_key((i,)), b"x" * 100)
        root = tree.root
        assert isinstance(root, Node)
        if root.level == 1:
            ptrs = [(high + NODE_SIZE * j, 0xFFFF_FFFF_FFFF_FFFF - j) for j in range(len(root.keys))]
            raw, _ = encode_node(Tree.INODES, 1, root.keys, ptrs, high, 0)
            worst = max(worst, len(raw))
        elif root.level > 1:
            break
    assert worst <= NODE_SIZE, f"an interior node of {worst} bytes overflows its {NODE_SIZE}-byte slot"


def test_reverse_scan_without_an_end_finds_keys_above_0xff():
    """The btree orders arbitrary bytes; `put_raw` accepts any key, even one starting with 0xff."""
    eng, dev = new_engine()
    want = []
    for i in range(300):
        with eng.transaction() as t:
            for k in (b"\x10" + i.to_bytes(2, "big"), b"\xff" + i.to_bytes(2, "big")):
                t.put_raw(Tree.MISC, k, b"v" * 50)
                want.append(k)
    want.sort()
    tree = eng.trees[Tree.MISC]
    assert tree.root_level >= 1
    assert [k for k, _ in tree.scan()] == want
    assert [k for k, _ in tree.scan(reverse=True)] == want[::-1]
    eng.close()


def test_deleting_keys_near_the_size_limit_leaves_no_empty_leaf_below_the_root():
    """Separators of ~1000 bytes make an interior node with one child weigh more than the
    merge threshold; it must still be merged away rather than keep an empty leaf."""
    eng, dev = new_engine()
    long_name = "k" * 990  # encoded key of 1002 bytes: a separator entry of 1021 bytes
    for n in range(60):
        with eng.transaction() as t:
            t.put(Tree.MISC, (n, long_name), b"")
    for n in reversed(range(60)):
        with eng.transaction() as t:
            t.delete(Tree.MISC, (n, long_name))
        check_engine_trees(eng)
    eng.close()


# -- scans under change --------------------------------------------------------------


def test_scan_survives_inserts_and_deletes_between_leaves():
    """Keys present for the whole scan come out once each, in order; nothing comes out twice."""
    rng = random.Random(3)
    eng, dev = new_engine(EngineOptions(cache_nodes=16))
    stable = set()
    for i in range(0, 1200, 2):
        with eng.transaction() as t:
            t.put(Tree.INODES, (i,), value_for(i, 150))
        stable.add(encode_key((i,)))
    tree = eng.trees[Tree.INODES]
    for reverse in (False, True):
        seen = []
        touched = set()
        for k, _ in tree.scan(reverse=reverse):
            seen.append(k)
            with eng.transaction() as t:
                for _ in range(3):
                    j = rng.randrange(1200)
                    kj = encode_key((j,))
                    touched.add(kj)
                    if rng.random() < 0.5:
                        t.delete(Tree.INODES, (j,))
                    else:
                        t.put(Tree.INODES, (j,), value_for(j, rng.choice([0, 150, 500])))
            if rng.random() < 0.05:
                eng.checkpoint()
        assert seen == (sorted(seen, reverse=reverse)), "scan went backwards"
        assert len(seen) == len(set(seen)), "scan yielded a key twice"
        untouched = stable - touched
        assert untouched <= set(seen)
        stable = {k for k, _ in tree.scan()}
    check_engine_trees(eng)
    eng.close()


# -- memory bounds -----------------------------------------------------------------


def test_cache_never_holds_more_than_cache_nodes_and_reads_stay_correct():
    options = EngineOptions(cache_nodes=16)
    eng, dev = new_engine(options)
    rng = random.Random(5)
    model = {}
    for i in range(3000):
        with eng.transaction() as t:
            k = (rng.randrange(10**6),)
            v = value_for(i, rng.randrange(0, 300))
            t.put(Tree.INODES, k, v)
            model[encode_key(k)] = v
        assert len(eng.store.cache) <= 16
        assert eng.store.dirty_count <= eng.dirty_limit
    eng.close()
    eng, dev = reopen(dev, options)
    tree = eng.trees[Tree.INODES]
    assert tree.root_level >= 2
    keys = list(model)
    rng.shuffle(keys)
    for k in keys:
        assert tree.get(k) == model[k]
        assert len(eng.store.cache) <= 16
    assert eng.store.reads > len(keys) // 2, "reads must come from disk, not from an unbounded cache"
    for reverse in (False, True):
        n = 0
        for n, _ in enumerate(tree.scan(reverse=reverse), 1):
            assert len(eng.store.cache) <= 16
        assert n == len(model)
    eng.close()


def test_dirty_nodes_stay_under_the_dirty_limit_after_every_commit():
    eng, dev = new_engine(EngineOptions(dirty_limit=20), size=16 << 20)
    assert eng.dirty_limit == 20
    rng = random.Random(9)
    checkpoints_before = eng.checkpoints
    for i in range(2000):
        with eng.transaction() as t:
            for _ in range(4):
                t.put(Tree.INODES, (rng.randrange(10**6),), value_for(i, 200))
        assert eng.store.dirty_count <= eng.dirty_limit
    assert eng.checkpoints > checkpoints_before + 5
    check_engine_trees(eng)
    eng.close()


# -- damaged nodes -----------------------------------------------------------------


def leaf_ptrs(eng: Engine, tree_id: int) -> list[tuple[Ptr, bytes, bytes | None]]:
    """Every leaf of a clean tree: its pointer and the key range it covers."""
    tree = eng.trees[tree_id]
    out = []
    stack = [(tree.root, tree.root_level, b"", None)]
    while stack:
        ptr, level, lo, hi = stack.pop()
        assert isinstance(ptr, Ptr)
        if level == 0:
            out.append((ptr, lo, hi))
            continue
        node = eng.store.load(ptr, tree_id, level)
        for i in reversed(range(len(node.keys))):
            stack.append((node.vals[i], level - 1, node.keys[i], node.keys[i + 1] if i + 1 < len(node.keys) else hi))
    return out


@pytest.mark.parametrize("where", ["payload", "header", "checksum"])
def test_a_damaged_node_fails_its_lookups_with_eio_and_nothing_else(where):
    eng, dev = new_engine()
    for i in range(0, 600, 20):
        with eng.transaction() as t:
            for k in range(i, i + 20):
                t.put(Tree.INODES, (k,), value_for(k, 120))
                t.put(Tree.DIRENTS, (k, 0, "name"), value_for(-k, 40))
    eng.close()
    eng, dev = reopen(dev)
    leaves = leaf_ptrs(eng, Tree.INODES)
    assert len(leaves) >= 3
    victim, lo, hi = leaves[len(leaves) // 2]
    eng.close()

    image = dev.durable_image()
    offset = {"payload": 200, "header": 5, "checksum": 22}[where]
    image[victim.addr + offset] ^= 0x40
    eng = Engine.open(FaultDevice(image))
    tree = eng.trees[Tree.INODES]
    inside = [k for k in range(600) if lo <= encode_key((k,)) and (hi is None or encode_key((k,)) < hi)]
    outside = [k for k in range(600) if k not in set(inside)]
    assert inside and outside
    for attempt in range(2):  # a failed read poisons nothing: it fails again, the same way
        with pytest.raises(OSError) as info:
            tree.get(encode_key((inside[attempt],)))
        assert info.value.errno == errno.EIO
        assert isinstance(info.value, FormatError)
    with eng.transaction() as t, pytest.raises(OSError) as info:
        t.get(Tree.INODES, (inside[-1],))
    assert info.value.errno == errno.EIO
    with pytest.raises(OSError) as info:
        list(tree.scan())
    assert info.value.errno == errno.EIO
    for k in outside:
        assert tree.get(encode_key((k,))) == value_for(k, 120)
    for k in range(600):
        assert eng.trees[Tree.DIRENTS].get(encode_key((k, 0, "name"))) == value_for(-k, 40)
    below = [encode_key((k,)) for k in outside if encode_key((k,)) < lo]
    assert [k for k, _ in tree.scan(b"", lo)] == below

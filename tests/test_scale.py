"""Memory is bounded by the cache and the dirty limit, not by the number of keys.

DESIGN.md (suggested shape, btree): an LRU cache of clean nodes, dirty nodes
kept until the next checkpoint, a checkpoint when they pass a bound, so
"memory is bounded by the cache, not by the size of the filesystem".  Here,
at CI size: 100,000 keys in 4 KiB nodes with a 64-node cache, inserted in a
scrambled order so that transactions dirty nodes all over the tree.  The
full-size measurement (1M keys, peak RSS) is tools/scale.py.
"""

import os
import random

import pytest

from pyfs.engine.device import FileDevice
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.keys import encode_key
from pyfs.format.records import Tree
from pyfs.format.superblock import plan_geometry

KEYS = 100_000
KEYS_PER_TX = 10
CACHE_NODES = 64
# A transaction of KEYS_PER_TX keys dirties at most a leaf and its path per
# key, plus the nodes its splits create: well under this margin.
ONE_TX_DIRTIES = 64


def value_of(i: int) -> bytes:
    return b"%010d" % i * 6


@pytest.fixture
def image(tmp_path):
    path = str(tmp_path / "scale.img")
    with open(path, "wb") as f:
        f.truncate(256 << 20)  # sparse
    return path


def open_engine(path: str) -> Engine:
    return Engine.open(FileDevice.open(path), EngineOptions(cache_nodes=CACHE_NODES))


def test_100k_keys_keep_cache_and_dirty_nodes_within_bounds_and_read_back_after_reopen(image):
    device = FileDevice.open(image)
    sb = plan_geometry(device.size, uuid=os.urandom(16), node_size=4096)
    engine = Engine.format(device, sb, EngineOptions(cache_nodes=CACHE_NODES))
    store = engine.store
    assert store.cache_nodes == CACHE_NODES
    order = list(range(KEYS))
    random.Random(1).shuffle(order)
    max_cached = max_dirty = 0
    for tx, first in enumerate(range(0, KEYS, KEYS_PER_TX), 1):
        with engine.transaction() as t:
            for i in order[first:first + KEYS_PER_TX]:
                t.put(Tree.INODES, (i,), value_of(i))
        # Checked after every transaction, which covers "after every 1000".
        max_cached = max(max_cached, len(store.cache))
        max_dirty = max(max_dirty, store.dirty_count)
        assert len(store.cache) <= CACHE_NODES, f"after transaction {tx}"
        assert store.dirty_count <= engine.dirty_limit + ONE_TX_DIRTIES, f"after transaction {tx}"
        if tx % 1000 == 0:
            engine.flush()  # a commit interval
    # The bounds were reached, so they were really tested.
    assert engine.checkpoints > 1
    assert max_cached == CACHE_NODES
    assert max_dirty > engine.dirty_limit // 2
    tree = engine.trees[Tree.INODES]
    assert tree.nkeys == KEYS

    rng = random.Random(2)
    rng.shuffle(order)
    for i in order:
        assert tree.get(encode_key((i,))) == value_of(i)
    assert len(store.cache) <= CACHE_NODES
    engine.close()

    engine = open_engine(image)
    assert engine.replayed_entries == 0
    tree = engine.trees[Tree.INODES]
    assert tree.nkeys == KEYS
    for i in rng.sample(range(KEYS), 5000):
        assert tree.get(encode_key((i,))) == value_of(i)
    assert len(engine.store.cache) <= CACHE_NODES
    engine.close()

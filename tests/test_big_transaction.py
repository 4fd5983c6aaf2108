"""Transactions of any size (issue 13): one entry with an out-of-line key list, atomic under power cuts.

Promises proven here (docs/format.md "Journal entries", docs/decisions.md
"Out-of-line key lists"; DESIGN.md invariant 1):
- pyfs/engine/engine.py: a commit whose key list does not fit in an entry
  writes it to checksummed data regions named by one entry; a power cut at
  every write and flush, in every crash mode, leaves all of its keys or none.
- fsck and replay see all of its keys; E2BIG only above the byte limit the
  caller passes to `Transaction.commit`.
- pyfs/engine/alloc.py: the buckets of the key list stay pinned until the
  next checkpoint, and are free again after it.
"""

from __future__ import annotations

import errno
import random
import uuid

import pytest

from pyfs.engine.engine import Engine, EngineOptions
from pyfs.engine.fault_device import MODES, FaultDevice
from pyfs.format.records import ROOT_INO, Tree
from pyfs.fs import format_filesystem
from pyfs.format.superblock import plan_geometry
from tools.common import fsck_device

IMAGE_SIZE = 24 << 20
KEYS = 20_000


def new_image() -> bytearray:
    sb = plan_geometry(IMAGE_SIZE, uuid=uuid.UUID(int=0xB16).bytes, bucket_size=256 << 10,
                       journal_size=256 << 10, node_size=16 << 10)
    dev = FaultDevice(bytearray(IMAGE_SIZE))
    eng = Engine.format(dev, sb)
    format_filesystem(eng)
    eng.close()
    return dev.durable_image()


def big_commit(eng: Engine) -> int:
    with eng.transaction() as t:
        for i in range(KEYS):
            t.put(Tree.XATTRS, (ROOT_INO, b"user.name-%06d" % i, 0), b"value-%06d" % i)
    return t.seq


def key_count(eng: Engine) -> int:
    return eng.trees[Tree.XATTRS].nkeys


# A checkpoint inside the commit would only add cut points after it is durable.
OPTIONS = EngineOptions(dirty_limit=100_000, reserve_buckets=40)


def test_a_commit_of_20000_keys_is_one_journal_entry_with_its_key_list_out_of_line():
    dev = FaultDevice(new_image())
    eng = Engine.open(dev, OPTIONS)
    seq = big_commit(eng)
    assert eng.journal.last_committed_seq == seq
    eng.flush()
    again = Engine.open(FaultDevice(dev.durable_image()))
    assert again.replayed_entries == 1
    entry = again.journal_scan.chain[-1].entry
    assert entry.seq == seq and entry.out_of_line and not entry.keys
    assert key_count(again) == KEYS


def test_a_power_cut_at_every_write_and_flush_of_a_20000_key_commit_leaves_all_or_nothing():
    base = new_image()
    dev = FaultDevice(base)
    eng = Engine.open(dev, OPTIONS)
    start = len(dev.ops)
    big_commit(eng)
    eng.flush()
    done = len(dev.ops)
    rng = random.Random(13)
    outcomes = set()
    for op_count in range(start, done + 1):
        for mode in MODES:
            image = dev.crash_image(op_count, mode, rng)
            reopened = Engine.open(FaultDevice(image), EngineOptions(read_only=True))
            n = key_count(reopened)
            assert n in (0, KEYS), f"cut at op {op_count} ({mode}): {n} keys"
            if op_count == done:
                assert n == KEYS  # acknowledged by the flush
            outcomes.add(n)
    assert outcomes == {0, KEYS}


def test_fsck_counts_every_key_of_an_out_of_line_entry_still_in_the_journal():
    dev = FaultDevice(new_image())
    eng = Engine.open(dev, OPTIONS)
    big_commit(eng)
    eng.flush()
    result, out = fsck_device(FaultDevice(dev.durable_image()), "check", force=True)
    assert result.exit_code == 0, out
    from pyfs.fsck.scan import read_image, read_trees

    trees = read_trees(read_image(FaultDevice(dev.durable_image())))
    assert len(trees.raw[Tree.XATTRS]) == KEYS


def test_the_space_of_an_out_of_line_key_list_is_reused_after_the_next_checkpoint():
    dev = FaultDevice(new_image())
    eng = Engine.open(dev, OPTIONS)
    big_commit(eng)
    pinned = set(eng.space.pinned)
    assert pinned
    assert all(not eng.space.is_free(b, eng.journal.reusable_seq) for b in pinned)
    eng.checkpoint()
    eng.flush()
    assert not eng.space.pinned
    with eng.transaction() as t:  # makes the checkpoint's seq known durable
        t.put(Tree.MISC, ("later",), b"1")
    eng.flush()
    open_buckets = {ob.bucket for ob in eng.space.open.values()}
    freed = [b for b in pinned if eng.space.is_free(b, eng.journal.reusable_seq)]
    assert sorted(freed) == sorted(pinned - open_buckets)  # the open data bucket goes on being filled


def test_a_commit_above_the_byte_limit_the_caller_passes_fails_with_e2big_and_changes_nothing():
    dev = FaultDevice(new_image())
    eng = Engine.open(dev)
    t = eng.transaction()
    for i in range(1000):
        t.put(Tree.XATTRS, (ROOT_INO, b"user.n%d" % i, 0), b"v" * 100)
    with pytest.raises(OSError) as err:
        t.commit(max_bytes=50_000)
    assert err.value.errno == errno.E2BIG
    assert key_count(eng) == 0
    with eng.transaction() as t2:
        for i in range(1000):
            t2.put(Tree.XATTRS, (ROOT_INO, b"user.n%d" % i, 0), b"v" * 100)
    assert key_count(eng) == 1000

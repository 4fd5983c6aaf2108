"""The journal keeps its promises: entry codec, replay planning, and the engine's use of both.

Promises proven here:
- pyfs/format/journal_entry.py: `decode_entry(encode_entry(e))` gives `e`
  back; `decode_entry` never raises and returns None for anything that is
  not a whole valid entry under this filesystem's seed (truncation, any
  changed byte, garbage, another seed) -- DESIGN.md invariant 5.
- pyfs/engine/journal_scan.py (`plan_replay`): replay starts at the newest valid
  checkpoint and follows consecutive seqs; a missing seq with no later proof
  is a torn tail (later entries dropped, `torn_at`/`dropped` reported); a
  missing seq that a later `durable_seq` proves flushed, or no checkpoint at
  all, is `JournalCorrupt` -- invariants 1, 2, 5.
- pyfs/engine/engine.py with pyfs/engine/journal_writer.py: a crash keeps exactly the
  transactions made durable by the last flush; the circular region wraps
  many times without losing the chain; after a replay the fresh checkpoint's
  seq is above every seq seen, so dropped entries never rejoin; a clean
  close leaves nothing to replay -- invariants 1, 2, 4, 6.
- Logged ops (invariant 7): journal-only keys survive any number of
  checkpoints and reopens because each checkpoint carries them, and they are
  never written to a btree node.
"""

from __future__ import annotations

import random
import uuid

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pyfs.engine.fault_device import FaultDevice
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.checksum import checksum
from pyfs.format.journal_entry import (
    _CSUM,
    _HEADER,
    FLAG_CHECKPOINT,
    FLAG_CLEAN,
    MAGIC,
    JournalEntry,
    RootPtr,
    decode_entry,
    encode_entry,
)
from pyfs.format.keys import encode_key
from pyfs.format.records import NODE_TREES, LoggedOp, Tree
from pyfs.format.superblock import plan_geometry
from pyfs.engine.journal_scan import JournalCorrupt
from pyfs.engine.journal_scan import Located, find_entries, plan_replay

SEED = 0x5EED_0F_F5
U64 = st.integers(0, (1 << 64) - 1)


# -- the entry codec -------------------------------------------------------------

KEY_UPDATES = st.lists(
    st.tuples(st.integers(0, 6), st.binary(min_size=1, max_size=40), st.one_of(st.none(), st.binary(max_size=80))),
    max_size=8,
)


@st.composite
def entries(draw) -> JournalEntry:
    checkpoint = draw(st.booleans())
    flags = (FLAG_CHECKPOINT if checkpoint else 0) | draw(st.sampled_from([0, FLAG_CLEAN]))
    roots = logged = None
    if checkpoint:
        roots = draw(
            st.dictionaries(
                st.integers(0, 6), st.builds(RootPtr, U64, U64, st.integers(0, 12), U64), max_size=7
            )
        )
        logged = draw(st.lists(st.tuples(st.binary(min_size=1, max_size=20), st.binary(max_size=60)), max_size=4))
    return JournalEntry(
        seq=draw(U64),
        last_seq=draw(U64),
        durable_seq=draw(U64),
        flags=flags,
        keys=draw(KEY_UPDATES),
        roots=roots,
        logged_ops=logged,
    )


@settings(max_examples=200, deadline=None)
@given(entries(), st.binary(max_size=30), st.binary(max_size=30), st.integers(0, (1 << 64) - 1))
def test_decode_of_encode_gives_back_the_entry_wherever_it_sits(entry, before, after, seed):
    raw = encode_entry(entry, seed)
    buf = before + raw + after
    assert decode_entry(buf, len(before), seed) == (entry, len(raw))
    assert decode_entry(memoryview(buf), len(before), seed) == (entry, len(raw))


@settings(max_examples=40, deadline=None)
@given(entries())
def test_every_truncation_of_an_entry_decodes_to_none(entry):
    raw = encode_entry(entry, SEED)
    for cut in range(len(raw)):
        assert decode_entry(raw[:cut], 0, SEED) is None


@settings(max_examples=150, deadline=None)
@given(entries(), st.data())
def test_any_changed_byte_makes_an_entry_invalid(entry, data):
    raw = bytearray(encode_entry(entry, SEED))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    assert decode_entry(bytes(raw), 0, SEED) is None


def test_every_single_byte_change_of_one_entry_is_detected():
    entry = JournalEntry(seq=77, last_seq=70, durable_seq=75, keys=[(0, b"\x10k", b"value"), (1, b"\x20x\x00\x00", None)])
    raw = encode_entry(entry, SEED)
    for pos in range(len(raw)):
        for flip in (0x01, 0x80, 0xFF):
            changed = bytearray(raw)
            changed[pos] ^= flip
            assert decode_entry(bytes(changed), 0, SEED) is None, (pos, flip)


@settings(max_examples=100, deadline=None)
@given(entries(), st.integers(0, (1 << 64) - 1))
def test_an_entry_written_under_another_seed_is_not_an_entry(entry, other_seed):
    if other_seed == SEED:
        return
    assert decode_entry(encode_entry(entry, other_seed), 0, SEED) is None


@settings(max_examples=300, deadline=None)
@example(MAGIC + bytes(20), 0)
@example(MAGIC + b"\xff\xff\xff\xff" + bytes(16), 0)
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=60).map(lambda b: MAGIC + b)), st.integers(0, 8))
def test_garbage_decodes_to_none_and_never_raises(buf, pos):
    assert decode_entry(buf, pos, SEED) is None


# Bodies with a valid checksum but the wrong shape: what an encoder bug, or a
# record from some other program using the same seed, would leave behind.
MSGPACK_VALUES = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(), st.binary(max_size=8), st.text(max_size=4)
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.integers(0, 8), inner, max_size=3)),
    max_leaves=12,
)


def sealed(body: bytes, seq: int = 1, seed: int = SEED) -> bytes:
    head = _HEADER.pack(MAGIC, len(body), seq)
    return head + _CSUM.pack(checksum(head + body, seed)) + body


@settings(max_examples=300, deadline=None)
@example([0, 0, FLAG_CHECKPOINT, [], [[1, 2], []]])  # roots as a list instead of a map
@example([float("inf"), 0, 0, [], None])  # a seq that is no integer
@example([0, 0, FLAG_CHECKPOINT, [], [{0: [float("inf"), 0, 0]}, []]])
@given(
    st.one_of(
        MSGPACK_VALUES,
        st.tuples(MSGPACK_VALUES, MSGPACK_VALUES, st.sampled_from([0, 1, 3]), MSGPACK_VALUES, MSGPACK_VALUES).map(list),
    )
)
def test_a_checksummed_body_of_the_wrong_shape_decodes_to_none_and_never_raises(body):
    result = decode_entry(sealed(msgpack.packb(body, use_bin_type=True)), 0, SEED)
    if result is None:
        return
    entry, _ = result
    assert all(isinstance(x, int) for x in (entry.seq, entry.last_seq, entry.durable_seq, entry.flags))
    for tree, key, value in entry.keys:
        assert isinstance(tree, int) and isinstance(key, bytes) and (value is None or isinstance(value, bytes))


# -- plan_replay on hand-built journals --------------------------------------------


def loc(seq: int, *, ckpt: bool = False, last: int | None = None, durable: int | None = None,
        offset: int | None = None, clean: bool = False) -> Located:
    """A valid entry as the scan would find it; by default durable up to the seq before it."""
    flags = (FLAG_CHECKPOINT if ckpt else 0) | (FLAG_CLEAN if clean else 0)
    entry = JournalEntry(
        seq=seq,
        last_seq=seq if ckpt else (last if last is not None else 0),
        durable_seq=durable if durable is not None else seq - 1,
        flags=flags,
        roots={} if ckpt else None,
        logged_ops=[] if ckpt else None,
    )
    return Located(entry, offset if offset is not None else seq * 1024, 100)


def chain_seqs(result) -> list[int]:
    return [l.entry.seq for l in result.chain]


def test_replay_follows_consecutive_seqs_from_the_checkpoint():
    found = [loc(5, ckpt=True), loc(6, last=5), loc(7, last=5), loc(8, last=5)]
    result = plan_replay(found)
    assert chain_seqs(result) == [5, 6, 7, 8]
    assert result.checkpoint.seq == 5
    assert result.last_seq == 8 and result.max_seq_seen == 8
    assert result.torn_at is None and result.dropped == []
    assert result.needs_replay
    assert result.resume_offset == 8 * 1024 + 512


def test_replay_order_is_seq_order_not_region_order():
    # The region wrapped: 8 and 9 sit at the start, before the checkpoint.
    found = [loc(8, last=6, offset=0), loc(9, last=6, offset=512), loc(6, ckpt=True, offset=9000), loc(7, last=6, offset=9500)]
    result = plan_replay(found)
    assert chain_seqs(result) == [6, 7, 8, 9]
    assert result.resume_offset == 1024


def test_a_lone_clean_checkpoint_needs_no_replay():
    result = plan_replay([loc(3, ckpt=True, clean=True)])
    assert chain_seqs(result) == [3]
    assert not result.needs_replay
    assert plan_replay([loc(3, ckpt=True)]).needs_replay  # not clean: the engine checkpoints afresh


def test_a_torn_tail_drops_the_entries_after_the_gap_and_reports_them():
    found = [loc(5, ckpt=True), loc(6, last=5), loc(8, last=5, durable=6), loc(9, last=5, durable=6)]
    result = plan_replay(found)
    assert chain_seqs(result) == [5, 6]
    assert result.torn_at == 7
    assert result.dropped == [8, 9]
    assert result.max_seq_seen == 9


def test_a_missing_last_entry_is_just_the_end_of_the_chain():
    result = plan_replay([loc(5, ckpt=True), loc(6, last=5)])
    assert chain_seqs(result) == [5, 6]
    assert result.torn_at is None and result.dropped == []


def test_a_missing_entry_proven_flushed_by_a_later_one_is_corruption():
    found = [loc(5, ckpt=True), loc(6, last=5), loc(8, last=5, durable=7)]
    with pytest.raises(JournalCorrupt) as info:
        plan_replay(found)
    assert "7" in str(info.value)


def test_a_later_checkpoint_also_proves_what_it_follows():
    found = [loc(5, ckpt=True), loc(6, last=5), loc(9, last=5, durable=8), loc(10, last=5, durable=7)]
    with pytest.raises(JournalCorrupt):
        plan_replay(found)


def test_a_journal_without_a_checkpoint_is_corrupt():
    with pytest.raises(JournalCorrupt):
        plan_replay([loc(6, last=5), loc(7, last=5)])
    with pytest.raises(JournalCorrupt):
        plan_replay([])


def test_entries_below_the_newest_checkpoint_are_stale_and_ignored():
    found = [loc(1, ckpt=True), loc(2, last=1), loc(3, last=1), loc(4, last=1),
             loc(5, ckpt=True), loc(6, last=5)]
    result = plan_replay(found)
    assert chain_seqs(result) == [5, 6]
    # Stale entries prove nothing missing above the checkpoint either.
    found = [loc(1, ckpt=True), loc(2, last=1, durable=1), loc(7, ckpt=True, durable=6)]
    assert chain_seqs(plan_replay(found)) == [7]


def test_an_unproven_missing_newest_checkpoint_falls_back_to_the_older_one():
    # Checkpoint 4 was being written when the power went: replay from 1.
    found = [loc(1, ckpt=True), loc(2, last=1), loc(3, last=1)]
    result = plan_replay(found)
    assert chain_seqs(result) == [1, 2, 3]
    # An entry after it that is not yet durable is dropped, not trusted.
    found.append(loc(5, last=4, durable=3))
    result = plan_replay(found)
    assert chain_seqs(result) == [1, 2, 3]
    assert result.torn_at == 4 and result.dropped == [5]


def test_a_missing_newest_checkpoint_that_was_proven_durable_is_corruption():
    found = [loc(1, ckpt=True), loc(2, last=1), loc(3, last=1), loc(5, last=4, durable=4)]
    with pytest.raises(JournalCorrupt):
        plan_replay(found)


def test_a_chain_entry_naming_a_checkpoint_outside_the_chain_is_corruption():
    with pytest.raises(JournalCorrupt):
        plan_replay([loc(5, ckpt=True), loc(6, last=3)])
    with pytest.raises(JournalCorrupt):
        plan_replay([loc(5, ckpt=True), loc(6, last=9)])


def test_a_seq_found_twice_is_noted_and_the_first_copy_used():
    first = loc(6, last=5, offset=2048)
    second = loc(6, last=5, offset=4096)
    result = plan_replay([loc(5, ckpt=True), first, second])
    assert result.chain[1] is first
    assert result.problems


# -- the engine over a small journal -------------------------------------------------

IMAGE_SIZE = 8 << 20


def new_engine(journal_size: int = 256 << 10, options: EngineOptions | None = None,
               version: int = 2) -> tuple[Engine, FaultDevice]:
    sb = plan_geometry(
        IMAGE_SIZE, uuid=uuid.UUID(int=0x10C).bytes, bucket_size=64 << 10, journal_size=journal_size, node_size=4096,
        version=version,
    )
    dev = FaultDevice(bytearray(IMAGE_SIZE))
    return Engine.format(dev, sb, options), dev


def reopen(dev: FaultDevice) -> tuple[Engine, FaultDevice]:
    """What a mount finds after a clean close, or after a crash at this moment."""
    dev2 = FaultDevice(dev.durable_image())
    return Engine.open(dev2), dev2


def visible(eng: Engine, tree: Tree = Tree.INODES) -> dict:
    with eng.transaction() as t:
        return dict(t.scan(tree))


def journal_entries(eng: Engine, image: bytes) -> list[Located]:
    sb = eng.sb
    return find_entries(bytes(image[sb.journal_offset : sb.journal_offset + sb.journal_size]), eng.seed)


def test_a_crash_after_unflushed_commits_shows_the_state_of_the_last_flush():
    eng, dev = new_engine(journal_size=1 << 20)
    model: dict = {}
    for i in range(300):
        with eng.transaction() as t:
            t.put(Tree.INODES, (i % 97,), b"v%d" % i)
            model[(i % 97,)] = b"v%d" % i
    flushed_seq = eng.flush()
    flushed = dict(model)
    checkpoints = eng.checkpoints
    for i in range(300, 700):
        with eng.transaction() as t:
            t.put(Tree.INODES, (i % 131,), b"w%d" % i)
            if i % 5 == 0:
                t.delete(Tree.INODES, (i % 97,))
    assert eng.checkpoints == checkpoints and eng.journal.durable_seq == flushed_seq, "nothing else made durable"
    eng2, _ = reopen(dev)
    assert visible(eng2) == flushed
    assert eng2.journal_scan.last_seq == flushed_seq
    assert eng2.replayed_entries == len(eng2.journal_scan.chain) - 1 > 0


def test_journal_wraps_around_many_times_and_every_reopen_finds_the_chain():
    journal_size = 256 << 10
    eng, dev = new_engine(journal_size=journal_size)
    rng = random.Random(11)
    model: dict = {}
    durable: dict = {}
    pending: list[tuple[int, dict]] = []
    written = 0
    reopens = 0
    for i in range(6000):
        with eng.transaction() as t:
            for _ in range(rng.randint(1, 3)):
                k = (rng.randrange(400),)
                if rng.random() < 0.2:
                    t.delete(Tree.INODES, k)
                    model.pop(k, None)
                else:
                    v = rng.randbytes(rng.randrange(50, 250))
                    t.put(Tree.INODES, k, v)
                    model[k] = v
        # A checkpoint the engine starts by itself (journal half full) makes
        # earlier commits durable too: keep each state until its seq is.
        pending.append((t.seq, dict(model)))
        if i % 7 == 0:
            eng.flush()
        while pending and pending[0][0] <= eng.journal.durable_seq:
            durable = pending.pop(0)[1]
        if i % 750 == 749:
            written += eng.journal.bytes_written
            if reopens % 2:
                eng.close()
                durable = dict(model)
            eng, dev = reopen(dev)
            reopens += 1
            model = dict(durable)
            pending = []
            assert visible(eng) == model
    written += eng.journal.bytes_written
    assert written > 6 * journal_size, f"only {written} journal bytes written"
    eng.close()
    eng, dev = reopen(dev)
    assert visible(eng) == model
    assert eng.replayed_entries == 0


def test_the_checkpoint_after_a_replay_is_above_every_seq_seen():
    eng, dev = new_engine()
    for i in range(50):
        with eng.transaction() as t:
            t.put(Tree.INODES, (i,), b"x" * 30)
        if i % 10 == 9:
            eng.flush()
    last = eng.journal.last_committed_seq
    eng2, _ = reopen(dev)
    scan = eng2.journal_scan
    assert scan.max_seq_seen == last
    assert eng2.replayed_entries > 0
    assert eng2.journal.checkpoint_seq > scan.max_seq_seen
    assert eng2.journal.durable_seq >= eng2.journal.checkpoint_seq
    with eng2.transaction() as t:
        assert t.seq is None
        t.put(Tree.INODES, (999,), b"after")
    assert t.seq > eng2.journal.checkpoint_seq


@pytest.mark.parametrize("version", [1, 2])
def test_entries_dropped_after_a_torn_tail_never_rejoin_the_chain(version):
    eng, dev = new_engine(version=version)
    with eng.transaction() as t:
        t.put(Tree.INODES, (1,), b"kept")
    eng.flush()
    seqs = []
    for i in range(2, 5):
        with eng.transaction() as t:
            t.put(Tree.INODES, (i,), b"lost")
        seqs.append(t.seq)
    eng.flush()  # 2, 3 and 4 go out in one write
    image = dev.durable_image()
    by_seq = {l.entry.seq: l for l in journal_entries(eng, image)}
    torn = by_seq[seqs[0]]
    # The first entry's sectors did not land, the later ones did.
    image[eng.sb.journal_offset + torn.offset + 30] ^= 0xFF

    eng2 = Engine.open(FaultDevice(image))
    scan = eng2.journal_scan
    assert scan.torn_at == seqs[0]
    assert scan.dropped == seqs[1:]
    assert any("torn tail" in n for n in eng2.notes)
    assert visible(eng2) == {(1,): b"kept"}
    if version == 1:  # v1: seqs jump above every seq seen; v2: `prev` links keep stale entries out
        assert eng2.journal.checkpoint_seq > max(seqs)
    with eng2.transaction() as t:
        t.put(Tree.INODES, (10,), b"new")
    with eng2.transaction() as t:
        t.put(Tree.INODES, (11,), b"newer")
    eng2.flush()
    dev2 = eng2.device

    eng3 = Engine.open(FaultDevice(dev2.durable_image()))
    assert visible(eng3) == {(1,): b"kept", (10,): b"new", (11,): b"newer"}
    if version == 1:
        assert scan.max_seq_seen < eng3.journal_scan.checkpoint.seq


def test_a_clean_close_leaves_nothing_to_replay():
    eng, dev = new_engine()
    for i in range(40):
        with eng.transaction() as t:
            t.put(Tree.INODES, (i,), b"y" * 20)
    eng.flush()
    eng.close()
    eng2, _ = reopen(dev)
    assert eng2.replayed_entries == 0
    assert len(eng2.journal_scan.chain) == 1
    assert eng2.journal_scan.checkpoint.is_clean
    assert not eng2.journal_scan.needs_replay
    assert len(visible(eng2)) == 40


# -- logged ops ----------------------------------------------------------------------

OP_KEY = (4242,)
MARKER = b"LOGGED-OP-ONLY-IN-THE-JOURNAL-" + bytes(range(0x40, 0x60))


def op_value() -> bytes:
    return LoggedOp("truncate", {"ino": 17, "size": 0}, MARKER).encode()


def node_tree_items(eng: Engine) -> list[tuple[int, bytes, bytes]]:
    return [(t, k, v) for t in NODE_TREES for k, v in eng.trees[t].scan()]


def assert_not_in_any_node(eng: Engine, image: bytes) -> None:
    op_key = encode_key(OP_KEY)
    for tree, k, v in node_tree_items(eng):
        assert not (k == op_key and tree != Tree.INODES), f"logged-op key found in btree {tree}"
        assert MARKER not in v
    sb = eng.sb
    assert MARKER not in bytes(image[sb.bucket_offset : sb.bucket_offset + sb.nbuckets * sb.bucket_size])


def logged_op(eng: Engine) -> bytes | None:
    with eng.transaction() as t:
        return t.get(Tree.LOGGED_OPS, OP_KEY)


def test_a_logged_op_survives_checkpoints_and_reopens_and_never_reaches_a_node():
    eng, dev = new_engine()
    with eng.transaction() as t:
        t.put(Tree.LOGGED_OPS, OP_KEY, op_value())
        t.put(Tree.INODES, OP_KEY, b"inode of the same number")  # same key bytes, another tree
    for i in range(20):
        for j in range(60):  # enough traffic that the region wraps past the op's own entry
            with eng.transaction() as t:
                t.put(Tree.INODES, (i * 100 + j % 40,), bytes(200))
        eng.checkpoint()
        assert logged_op(eng) == op_value()
    image = dev.durable_image()
    assert_not_in_any_node(eng, image)
    # Its own entry is overwritten: only checkpoints carry it now.
    located = journal_entries(eng, image)
    found = [l.entry for l in located]
    assert not [l for l in located if any(v is not None and MARKER in v for _, _, v in l.keys())]
    assert [e for e in found if e.is_checkpoint and any(MARKER in v for _, v in e.logged_ops)]

    eng, dev = reopen(dev)  # a crash right after the last checkpoint
    assert logged_op(eng) == op_value()
    eng.close()
    eng, dev = reopen(dev)
    assert logged_op(eng) == op_value()
    assert_not_in_any_node(eng, dev.durable_image())
    with eng.transaction() as t:
        assert dict(t.scan(Tree.LOGGED_OPS)) == {OP_KEY: op_value()}

    with eng.transaction() as t:
        t.delete(Tree.LOGGED_OPS, OP_KEY)
    eng.checkpoint()
    eng, dev = reopen(dev)
    assert logged_op(eng) is None
    assert eng.logged_ops == {}
    with eng.transaction() as t:
        assert t.get(Tree.INODES, OP_KEY) == b"inode of the same number"


def test_a_logged_op_deleted_after_the_last_checkpoint_stays_deleted_after_a_crash():
    eng, dev = new_engine()
    with eng.transaction() as t:
        t.put(Tree.LOGGED_OPS, OP_KEY, op_value())
    eng.checkpoint()
    with eng.transaction() as t:
        t.delete(Tree.LOGGED_OPS, OP_KEY)
    eng.flush()
    eng, dev = reopen(dev)
    assert logged_op(eng) is None
    # ... and one put after the last checkpoint comes back by replay.
    with eng.transaction() as t:
        t.put(Tree.LOGGED_OPS, OP_KEY, op_value())
    eng.flush()
    eng, dev = reopen(dev)
    assert logged_op(eng) == op_value()

"""The engine keeps the promises of its API (pyfs/engine/engine.py, pyfs/engine/transaction.py).

Promises proven here:
- A transaction reads its own writes (`get`, `scan` forward, reverse, with
  bounds and prefixes); an exception inside `with engine.transaction()`
  leaves no trace, not even a journal entry; a commit appends exactly one
  entry whatever its number of keys (DESIGN.md invariant 1); a closed
  transaction refuses use; oversize keys and values are refused with
  ValueError at `put`, before anything is logged, so every logged entry
  can be replayed.
- A read-only open replays in memory and writes nothing; commits get EROFS.
- After a failed write or flush the caller gets EIO, later commits EROFS and
  later flushes EIO: durability is never claimed again (invariant 4).
- `stats()` reports what is there.
- Group commit: concurrent `flush_async` callers share device flushes; the
  commit timer makes commits durable without an explicit flush (invariant 6).
- Checkpoints start by themselves when the journal is half full and when
  dirty nodes pass `dirty_limit`.
- Bad input gets a clear error: a device that is not a pyfs image is
  `NotPyfs`, a truncated or damaged one a `FormatError` (invariant 9).
"""

from __future__ import annotations

import errno
import random
import uuid
from dataclasses import replace

import pytest
import trio

from pyfs.engine.check import check_engine, check_image
from pyfs.engine.fault_device import FaultDevice
from pyfs.engine.engine import Engine, EngineOptions
from pyfs.format.errors import FormatError, NotPyfs, UnsupportedVersion
from pyfs.format.keys import MAX_KEY_BYTES, encode_key
from pyfs.format.records import NODE_TREES, Extent, LoggedOp, Tree
from pyfs.format.superblock import BLOCK_SIZE, plan_geometry
from pyfs.engine.journal_scan import JournalCorrupt
from pyfs.engine.journal_scan import find_entries
from pyfs.engine.superblock_io import read_superblock
from pyfs.engine.transaction import TransactionClosed
from tools.crashsim import fresh_image

IMAGE_SIZE = 4 << 20


def new_engine(
    journal_size: int = 256 << 10, options: EngineOptions | None = None, size: int = IMAGE_SIZE
) -> tuple[Engine, FaultDevice]:
    sb = plan_geometry(
        size, uuid=uuid.UUID(int=0xE4E).bytes, bucket_size=64 << 10, journal_size=journal_size, node_size=4096
    )
    dev = FaultDevice(bytearray(size))
    return Engine.format(dev, sb, options), dev


def opened(seed: int = 1) -> tuple[Engine, FaultDevice]:
    dev = FaultDevice(fresh_image(seed))
    return Engine.open(dev), dev


def put_many(engine: Engine, items: dict) -> None:
    with engine.transaction() as t:
        for (tree, key), value in items.items():
            t.put(tree, key, value)


def committed(engine: Engine, tree: Tree) -> dict:
    with engine.transaction() as t:
        return dict(t.scan(tree))


def journal_entries(engine: Engine, image: bytes):
    sb = engine.sb
    region = bytes(image[sb.journal_offset : sb.journal_offset + sb.journal_size])
    return sorted(find_entries(region, engine.seed), key=lambda loc: loc.entry.seq)


def crashed_image_with_replay(seed: int = 1) -> bytearray:
    """An image whose journal holds flushed entries after its last checkpoint."""
    engine, dev = opened(seed)
    for i in range(20):
        with engine.transaction() as t:
            t.put(Tree.INODES, (i,), b"inode %d" % i)
            t.put(Tree.LOGGED_OPS, (i % 3,), LoggedOp("truncate", {"ino": i}).encode())
        if i % 5 == 4:
            engine.flush()
    return dev.durable_image()


# -- transactions: reading your own writes ------------------------------------------------


def test_get_sees_committed_keys_and_the_transactions_own_puts_and_deletes():
    engine, _ = opened()
    put_many(engine, {(Tree.INODES, (i,)): b"old %d" % i for i in range(10)})
    with engine.transaction() as t:
        t.put(Tree.INODES, (3,), b"new 3")
        t.put(Tree.INODES, (42,), b"new 42")
        t.delete(Tree.INODES, (5,))
        t.delete(Tree.INODES, (77,))  # absent: deleting it is harmless
        assert t.get(Tree.INODES, (3,)) == b"new 3"
        assert t.get(Tree.INODES, (42,)) == b"new 42"
        assert t.get(Tree.INODES, (5,)) is None
        assert t.get(Tree.INODES, (4,)) == b"old 4"
        assert t.get(Tree.DIRENTS, (3,)) is None, "trees are separate key spaces"
        t.put(Tree.INODES, (5,), b"back again")
        assert t.get(Tree.INODES, (5,)) == b"back again"
        t.delete(Tree.INODES, (42,))
        assert t.get(Tree.INODES, (42,)) is None
    with engine.transaction() as t:
        assert t.get(Tree.INODES, (3,)) == b"new 3"
        assert t.get(Tree.INODES, (5,)) == b"back again"
        assert t.get(Tree.INODES, (42,)) is None


def scan_keys() -> list[tuple]:
    return [(a, name) for a in range(8) for name in ("", "a", "ab", "b", "name\x00x", "zz")] + [
        (a,) for a in range(8)
    ] + [(a, "a", 7) for a in range(8)]


@pytest.mark.parametrize("seed", range(4))
def test_scan_merges_own_writes_forward_reverse_with_bounds_and_prefixes(seed):
    rng = random.Random(seed)
    engine, _ = opened(seed + 1)
    universe = scan_keys()
    base = {k: b"c%d" % i for i, k in enumerate(universe) if rng.random() < 0.5}
    put_many(engine, {(Tree.DIRENTS, k): v for k, v in base.items()})
    model = dict(base)
    order = lambda k: encode_key(k)  # noqa: E731 - the engine's order is the encoded order
    with engine.transaction() as t:
        for k in rng.sample(universe, 30):
            if rng.random() < 0.4:
                t.delete(Tree.DIRENTS, k)
                model.pop(k, None)
            else:
                t.put(Tree.DIRENTS, k, b"t" + rng.randbytes(3))
                model[k] = t.get(Tree.DIRENTS, k)
        ordered = sorted(model.items(), key=lambda kv: order(kv[0]))
        assert list(t.scan(Tree.DIRENTS)) == ordered
        assert list(t.scan(Tree.DIRENTS, reverse=True)) == ordered[::-1]
        for _ in range(20):
            lo, hi = sorted(rng.sample(universe, 2), key=order)
            expect = [(k, v) for k, v in ordered if order(lo) <= order(k) < order(hi)]
            assert list(t.scan(Tree.DIRENTS, lo, hi)) == expect
            assert list(t.scan(Tree.DIRENTS, lo, hi, reverse=True)) == expect[::-1]
            assert list(t.scan(Tree.DIRENTS, lo)) == [(k, v) for k, v in ordered if order(k) >= order(lo)]
            assert list(t.scan(Tree.DIRENTS, end=hi)) == [(k, v) for k, v in ordered if order(k) < order(hi)]
        for prefix in [(3,), (5, "a"), (0, "zz"), (9,)]:
            expect = [(k, v) for k, v in ordered if k[: len(prefix)] == prefix]
            assert list(t.scan(Tree.DIRENTS, prefix=prefix)) == expect
            assert list(t.scan(Tree.DIRENTS, prefix=prefix, reverse=True)) == expect[::-1]
    assert committed(engine, Tree.DIRENTS) == model


def test_scan_of_logged_ops_sees_own_writes_like_any_tree():
    engine, _ = opened()
    op = LoggedOp("rmtree", {"ino": 9}).encode()
    put_many(engine, {(Tree.LOGGED_OPS, (i,)): op for i in (1, 3, 5)})
    with engine.transaction() as t:
        t.put(Tree.LOGGED_OPS, (4,), op)
        t.delete(Tree.LOGGED_OPS, (3,))
        assert [k for k, _ in t.scan(Tree.LOGGED_OPS)] == [(1,), (4,), (5,)]
        assert [k for k, _ in t.scan(Tree.LOGGED_OPS, (2,), (5,), reverse=True)] == [(4,)]


# -- transactions: atomicity and the journal -------------------------------------------------


def test_an_exception_inside_a_transaction_leaves_no_trace():
    engine, dev = opened()
    put_many(engine, {(Tree.INODES, (1,)): b"before"})
    seq = engine.journal.last_committed_seq
    ops = len(dev.ops)
    with pytest.raises(RuntimeError, match="boom"):
        with engine.transaction() as t:
            t.put(Tree.INODES, (1,), b"changed")
            t.put(Tree.INODES, (2,), b"added")
            t.put(Tree.LOGGED_OPS, (1,), LoggedOp("truncate", {}).encode())
            raise RuntimeError("boom")
    assert t.closed and t.seq is None
    assert engine.journal.last_committed_seq == seq
    assert len(dev.ops) == ops
    assert committed(engine, Tree.INODES) == {(1,): b"before"}
    assert engine.logged_ops == {}
    engine.flush()
    assert [loc.entry.seq for loc in journal_entries(engine, dev.durable_image())][-1] == seq
    with engine.transaction() as t:
        t.put(Tree.INODES, (3,), b"next")
    assert t.seq == seq + 1


@pytest.mark.parametrize("nkeys", [1, 2, 40, 300])
def test_a_commit_appends_exactly_one_journal_entry_whatever_the_number_of_keys(nkeys):
    engine, dev = opened()
    seq = engine.journal.last_committed_seq
    with engine.transaction() as t:
        for i in range(nkeys):
            t.put(Tree.INODES if i % 2 else Tree.XATTRS, (i, "k"), b"v" * (i % 50))
        if nkeys > 1:
            t.delete(Tree.MISC, ("absent",))
    assert t.seq == seq + 1 == engine.journal.last_committed_seq
    engine.flush()
    entries = [loc for loc in journal_entries(engine, dev.durable_image()) if loc.entry.seq > seq]
    assert [e.entry.seq for e in entries] == [seq + 1]
    assert len(entries[0].keys()) == nkeys + (nkeys > 1)


def test_an_empty_transaction_commits_nothing():
    engine, _ = opened()
    seq = engine.journal.last_committed_seq
    with engine.transaction() as t:
        t.get(Tree.INODES, (1,))
    assert t.seq is None
    assert engine.journal.last_committed_seq == seq
    assert not engine.journal.has_pending


@pytest.mark.parametrize("ending", ["commit", "abort", "exception"])
def test_a_closed_transaction_refuses_every_use(ending):
    engine, _ = opened()
    t = engine.transaction()
    t.put(Tree.INODES, (1,), b"x")
    if ending == "commit":
        t.commit()
    elif ending == "abort":
        t.abort()
    else:
        with pytest.raises(KeyError), t:
            raise KeyError("inside")
    seq = engine.journal.last_committed_seq
    uses = [
        lambda: t.get(Tree.INODES, (1,)),
        lambda: t.put(Tree.INODES, (2,), b"y"),
        lambda: t.delete(Tree.INODES, (1,)),
        lambda: list(t.scan(Tree.INODES)),
        lambda: t.adjust_bucket_usage(engine.sb.bucket_start(3), 512),
        t.commit,
    ]
    for use in uses:
        with pytest.raises(TransactionClosed):
            use()
    assert engine.journal.last_committed_seq == seq


def test_oversize_keys_and_values_are_refused_at_put_before_anything_is_logged():
    engine, dev = opened()
    seq = engine.journal.last_committed_seq
    ops = len(dev.ops)
    key = (1, "k" * 200)
    refused = [
        lambda t: t.put(Tree.INODES, key, bytes(engine.max_value_bytes + 1000)),
        lambda t: t.put(Tree.INODES, (1,), bytes(engine.store.max_entry)),
        lambda t: t.put(Tree.INODES, ("x" * MAX_KEY_BYTES,), b""),
        lambda t: t.put_raw(Tree.INODES, b"\x30" + b"k" * MAX_KEY_BYTES, b""),
        lambda t: t.put_raw(Tree.INODES, b"", b"v"),
        lambda t: t.put(Tree.LOGGED_OPS, (1,), bytes(engine.store.max_entry)),
        lambda t: t.put(99, (1,), b"no such btree"),
    ]
    for put in refused:
        with pytest.raises(ValueError):
            with engine.transaction() as t:
                t.put(Tree.MISC, ("fine",), b"would be committed with it")
                put(t)
    assert engine.journal.last_committed_seq == seq
    assert len(dev.ops) == ops
    assert committed(engine, Tree.MISC) == {}
    # The largest value that is accepted is logged and replays after a crash.
    biggest = bytes(range(256)) * (engine.max_value_bytes // 256) + bytes(engine.max_value_bytes % 256)
    with engine.transaction() as t:
        t.put_raw(Tree.INODES, b"\x30" + b"k" * (MAX_KEY_BYTES // 4 - 1), biggest)
    engine.flush()
    again = Engine.open(FaultDevice(dev.durable_image()))
    assert again.trees[Tree.INODES].get(b"\x30" + b"k" * (MAX_KEY_BYTES // 4 - 1)) == biggest


def test_deleting_from_an_unknown_btree_is_refused_with_valueerror_and_the_engine_stays_writable():
    engine, dev = opened()
    seq = engine.journal.last_committed_seq
    with pytest.raises(ValueError):
        with engine.transaction() as t:
            t.put(Tree.INODES, (1,), b"half of a transaction")
            t.delete(99, (1,))
    assert engine.journal.last_committed_seq == seq
    assert engine.failed is None
    assert committed(engine, Tree.INODES) == {}, "no half-applied transaction"
    put_many(engine, {(Tree.INODES, (2,)): b"still writable"})
    engine.flush()


def test_adjusting_the_count_of_an_address_outside_the_bucket_area_is_refused():
    engine, _ = opened()
    sb = engine.sb
    seq = engine.journal.last_committed_seq
    for addr in (0, sb.journal_offset, sb.bucket_offset - 1, sb.bucket_start(sb.nbuckets)):
        with pytest.raises(ValueError):
            with engine.transaction() as t:
                t.adjust_bucket_usage(addr, 4096)
    assert engine.journal.last_committed_seq == seq
    assert check_engine(engine) == []


def test_a_closed_engine_refuses_commits_with_ebadf_and_closing_twice_is_harmless():
    engine, dev = opened()
    put_many(engine, {(Tree.INODES, (1,)): b"x"})
    engine.close()
    engine.close()
    assert_errno(lambda: put_many(engine, {(Tree.INODES, (2,)): b"y"}), errno.EBADF)
    assert_errno(lambda: engine.allocate_data(4096), errno.EBADF)
    assert Engine.open(FaultDevice(dev.durable_image())).replayed_entries == 0


# -- read-only opens -------------------------------------------------------------------------


def test_a_read_only_open_replays_in_memory_and_writes_nothing():
    image = crashed_image_with_replay()
    dev = FaultDevice(image)
    engine = Engine.open(dev, EngineOptions(read_only=True))
    assert engine.read_only
    assert engine.replayed_entries > 0
    assert committed(engine, Tree.INODES) == {(i,): b"inode %d" % i for i in range(20)}
    assert set(engine.logged_ops) == {encode_key((i,)) for i in range(3)}
    assert check_engine(engine) == []
    for refused in (
        lambda: put_many(engine, {(Tree.INODES, (99,)): b"no"}),
        engine.checkpoint,
        lambda: engine.allocate_data(4096),
        lambda: engine.write_data(engine.sb.bucket_start(5), b"x" * 512),
    ):
        with pytest.raises(OSError) as info:
            refused()
        assert info.value.errno == errno.EROFS
    engine.flush()  # nothing to make durable: no write
    engine.close()
    assert dev.ops == []
    assert dev.durable_image() == image


def test_a_read_only_device_opens_the_engine_read_only():
    image = crashed_image_with_replay()
    dev = FaultDevice(image, read_only=True)
    engine = Engine.open(dev)
    assert engine.read_only and engine.replayed_entries > 0
    with pytest.raises(OSError) as info:
        put_many(engine, {(Tree.INODES, (99,)): b"no"})
    assert info.value.errno == errno.EROFS
    engine.close()
    assert dev.ops == [] and dev.durable_image() == image


def test_a_read_only_open_twice_gives_the_same_state_and_a_writable_open_after_it_agrees():
    image = crashed_image_with_replay()
    first = Engine.open(FaultDevice(image), EngineOptions(read_only=True))
    second = Engine.open(FaultDevice(image), EngineOptions(read_only=True))
    writable = Engine.open(FaultDevice(image))
    for tree in NODE_TREES:
        assert list(first.trees[tree].scan()) == list(second.trees[tree].scan())
        if tree != Tree.ALLOC:  # the writable open checkpoints, which counts the nodes it writes
            assert list(first.trees[tree].scan()) == list(writable.trees[tree].scan())
    assert first.logged_ops == writable.logged_ops


# -- I/O errors --------------------------------------------------------------------------------


def fail_next(dev: FaultDevice, what: str) -> None:
    """Make the next flush (or the next write) of `dev` fail with EIO."""
    if what == "flush":
        dev.fail_flush_at = dev.flush_count
    else:
        dev.fail_write_at = dev.write_count


def assert_errno(call, err: int) -> OSError:
    with pytest.raises(OSError) as info:
        call()
    assert info.value.errno == err, info.value
    return info.value


@pytest.mark.parametrize("what", ["flush", "write"])
def test_after_a_failed_flush_commits_get_erofs_and_flushes_eio_forever(what):
    engine, dev = opened()
    put_many(engine, {(Tree.INODES, (1,)): b"durable"})
    durable = engine.flush()
    put_many(engine, {(Tree.INODES, (2,)): b"never acknowledged"})
    fail_next(dev, what)
    assert_errno(engine.flush, errno.EIO)
    assert engine.journal.durable_seq == durable
    for _ in range(3):
        assert_errno(lambda: put_many(engine, {(Tree.INODES, (3,)): b"later"}), errno.EROFS)
        assert_errno(engine.flush, errno.EIO)
        assert_errno(engine.checkpoint, errno.EROFS)
        assert_errno(lambda: engine.allocate_data(4096), errno.EROFS)
    assert_errno(lambda: trio.run(engine.flush_async), errno.EIO)
    assert engine.journal.durable_seq == durable
    ops = len(dev.ops)
    engine.close()  # no final checkpoint after an error
    assert len(dev.ops) == ops
    after = Engine.open(FaultDevice(dev.durable_image()))
    assert committed(after, Tree.INODES)[(1,)] == b"durable"


def test_a_failed_data_write_is_eio_and_the_engine_turns_read_only():
    engine, dev = opened()
    addr = engine.allocate_data(4096)
    fail_next(dev, "write")
    assert_errno(lambda: engine.write_data(addr, bytes(4096)), errno.EIO)
    assert_errno(lambda: put_many(engine, {(Tree.INODES, (1,)): b"x"}), errno.EROFS)
    assert_errno(engine.flush, errno.EIO)


def test_a_failed_checkpoint_is_eio_and_nothing_after_it_claims_durability():
    engine, dev = opened()
    put_many(engine, {(Tree.INODES, (i,)): bytes(100) for i in range(50)})
    durable = engine.journal.durable_seq
    fail_next(dev, "flush")
    assert_errno(engine.checkpoint, errno.EIO)
    assert engine.journal.durable_seq == durable
    assert_errno(engine.flush, errno.EIO)
    assert_errno(lambda: put_many(engine, {(Tree.INODES, (1,)): b"x"}), errno.EROFS)


def test_a_failed_async_flush_is_eio_for_every_waiter_and_later_flushes_fail_too():
    engine, dev = opened()
    results: list[object] = []

    async def committer(i: int) -> None:
        put_many(engine, {(Tree.INODES, (i,)): b"x"})
        try:
            results.append(await engine.flush_async())
        except OSError as exc:
            results.append(exc.errno)

    async def main() -> None:
        fail_next(dev, "flush")
        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(committer, i)

    trio.run(main)
    assert results == [errno.EIO] * 5
    assert engine.journal.durable_seq < engine.journal.last_committed_seq
    assert_errno(engine.flush, errno.EIO)
    assert_errno(lambda: trio.run(engine.flush_async), errno.EIO)


# -- statistics --------------------------------------------------------------------------------


def test_stats_report_keys_per_tree_journal_fill_seqs_and_space():
    engine, _ = opened()
    rng = random.Random(3)
    for i in range(60):
        with engine.transaction() as t:
            t.put(Tree.INODES, (i,), rng.randbytes(40))
            if i % 2:
                t.put(Tree.DIRENTS, (1, i, "n"), b"d")
            if i % 10 == 0:
                t.put(Tree.LOGGED_OPS, (i,), LoggedOp("truncate", {}).encode())
        if i % 9 == 0:
            engine.flush()
    addr = engine.allocate_data(8192)
    csum = engine.write_data(addr, bytes(8192))
    with engine.transaction() as t:
        t.put(Tree.EXTENTS, (5, 0), Extent(8192, addr, 8192, csum).encode())
        t.adjust_bucket_usage(addr, 8192)
    s = engine.stats()
    for tree in NODE_TREES:
        assert s.keys[tree.name.lower()] == len(list(engine.trees[tree].scan())), tree.name
    assert s.keys["inodes"] == 60 and s.keys["dirents"] == 30 and s.keys["extents"] == 1
    assert s.keys["logged_ops"] == 6
    assert 0 < s.journal_fill < 1
    assert s.journal_bytes == engine.journal.used > 0
    assert s.checkpoint_seq <= s.durable_seq <= s.seq == engine.journal.last_committed_seq
    assert s.durable_seq < s.seq, "the last commits were not flushed"
    assert s.dirty_nodes == engine.store.dirty_count > 0
    assert s.space["buckets"] == engine.sb.nbuckets
    assert s.space["buckets_data"] >= 1 and s.space["buckets_btree"] >= 1
    assert s.space["buckets_free"] + s.space["buckets_data"] + s.space["buckets_btree"] <= s.space["buckets"]
    assert s.space["live_bytes"] >= 8192
    assert s.checkpoints == engine.checkpoints and s.replayed_entries == 0
    engine.flush()
    assert engine.stats().durable_seq == engine.stats().seq
    engine.checkpoint()
    after = engine.stats()
    assert after.dirty_nodes == 0 and after.checkpoint_seq == after.durable_seq == after.seq
    assert after.journal_fill < s.journal_fill


def test_stats_after_a_replay_count_the_replayed_entries_and_notes():
    engine = Engine.open(FaultDevice(crashed_image_with_replay()), EngineOptions(read_only=True))
    s = engine.stats()
    assert s.replayed_entries == engine.replayed_entries > 0
    assert s.keys["inodes"] == 20 and s.keys["logged_ops"] == 3
    assert s.notes == engine.notes
    assert s.durable_seq <= s.seq


# -- group commit ------------------------------------------------------------------------------


def test_concurrent_async_flushes_share_device_flushes_and_all_return_durable():
    engine, dev = opened()
    callers = 12
    returned: list[tuple[int, int]] = []

    async def committer(i: int) -> None:
        with engine.transaction() as t:
            t.put(Tree.INODES, (i,), b"from task %d" % i)
        await trio.sleep(0)
        durable = await engine.flush_async()
        assert engine.journal.durable_seq >= t.seq
        returned.append((t.seq, durable))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(callers):
                nursery.start_soon(committer, i)

    flushes = dev.flush_count
    trio.run(main)
    assert len(returned) == callers
    assert all(durable >= seq for seq, durable in returned)
    assert 0 < dev.flush_count - flushes < callers
    crashed = Engine.open(FaultDevice(dev.durable_image()))
    assert len(committed(crashed, Tree.INODES)) == callers


def test_async_flushes_interleaved_with_commits_never_return_before_their_seq_is_durable():
    engine, dev = opened()
    violations: list[str] = []

    async def committer(i: int) -> None:
        for round_ in range(6):
            with engine.transaction() as t:
                t.put(Tree.INODES, (i, round_), bytes(30))
            if round_ % 2:
                await trio.sleep(0)
            await engine.flush_async()
            if engine.journal.durable_seq < t.seq:
                violations.append(f"task {i} round {round_}: seq {t.seq} not durable")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(committer, i)

    trio.run(main)
    assert violations == []
    assert engine.journal.durable_seq == engine.journal.last_committed_seq
    assert len(committed(Engine.open(FaultDevice(dev.durable_image())), Tree.INODES)) == 48


def test_the_commit_timer_makes_a_commit_durable_without_an_explicit_flush():
    engine, dev = opened()
    seqs: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.run_commit_timer, 0.05)
            with engine.transaction() as t:
                t.put(Tree.INODES, (1,), b"timer")
            seqs.append(t.seq)
            assert engine.journal.durable_seq < t.seq
            with trio.fail_after(10):
                while engine.journal.durable_seq < t.seq:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert engine.journal.durable_seq >= seqs[0]
    crashed = Engine.open(FaultDevice(dev.durable_image()))
    assert committed(crashed, Tree.INODES) == {(1,): b"timer"}


def test_the_commit_timer_stops_when_the_engine_closes():
    engine, _ = opened()

    async def main() -> None:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(engine.run_commit_timer, 0.01)
                await trio.sleep(0.03)
                engine.close()

    trio.run(main)  # returns: the timer task ended by itself


# -- automatic checkpoints -----------------------------------------------------------------------


def test_a_checkpoint_starts_when_the_journal_passes_half_full():
    # An image big enough that the dirty-node bound is never what starts one.
    engine, _ = new_engine(journal_size=256 << 10, size=16 << 20)
    region = engine.sb.journal_size
    rng = random.Random(5)
    start = engine.checkpoints
    largest = 0
    seen_fill = 0.0
    for i in range(1500):
        before = engine.journal.tail_vpos
        with engine.transaction() as t:
            t.put(Tree.INODES, (rng.randrange(300),), rng.randbytes(rng.randrange(200, 900)))
        largest = max(largest, engine.journal.tail_vpos - before)
        if i % 5 == 0:
            engine.flush()
        seen_fill = max(seen_fill, engine.journal.fill)
        assert engine.journal.fill <= 0.5 + (largest + 512) / region, f"commit {i}: fill {engine.journal.fill:.3f}"
        assert engine.store.dirty_count < engine.dirty_limit
    assert engine.checkpoints - start >= 3
    assert seen_fill > 0.45, "the journal filled up to the threshold between checkpoints"
    assert check_engine(engine) == []


def test_a_checkpoint_starts_when_dirty_nodes_pass_the_limit():
    engine, _ = new_engine(journal_size=1 << 20, options=EngineOptions(dirty_limit=8, checkpoint_fill=2.0))
    assert engine.dirty_limit <= 8
    rng = random.Random(6)
    start = engine.checkpoints
    for i in range(400):
        with engine.transaction() as t:
            t.put(Tree.INODES, (rng.randrange(100_000),), rng.randbytes(300))
        assert engine.store.dirty_count <= engine.dirty_limit, f"commit {i}"
    # The journal never came near full (so it did not cause them): dirty nodes did.
    assert engine.journal.fill < 0.5
    assert engine.checkpoints - start >= 3
    assert check_engine(engine) == []


def test_the_dirty_limit_is_capped_so_a_checkpoint_fits_in_the_reserve():
    engine, _ = new_engine(options=EngineOptions(dirty_limit=10**9))
    sb = engine.sb
    assert engine.dirty_limit * sb.node_size <= (engine.space.reserve - 1) * sb.bucket_size


# -- bad input ------------------------------------------------------------------------------------


def test_random_bytes_are_not_a_pyfs_image():
    dev = FaultDevice(random.Random(1).randbytes(1 << 20))
    with pytest.raises(NotPyfs) as info:
        Engine.open(dev)
    assert isinstance(info.value, OSError)
    assert "not a pyfs image" in str(info.value)
    assert dev.ops == []


@pytest.mark.parametrize("size", [0, 1, 511, BLOCK_SIZE, 2 * BLOCK_SIZE - 1, 2 * BLOCK_SIZE, 64 << 10])
def test_an_empty_or_tiny_device_is_not_a_pyfs_image(size):
    with pytest.raises(NotPyfs) as info:
        Engine.open(FaultDevice(bytes(size)))
    assert "not a pyfs image" in str(info.value)
    assert info.value.errno == errno.EIO


def test_a_truncated_image_says_so():
    image = fresh_image(1)
    sb, _ = read_superblock(FaultDevice(image))
    cut = image[: sb.size // 2]
    with pytest.raises(FormatError) as info:
        Engine.open(FaultDevice(cut))
    assert "truncated" in str(info.value)


def test_a_damaged_primary_superblock_falls_back_to_the_backup_with_a_note():
    image = fresh_image(1)
    image[100] ^= 0xFF
    engine = Engine.open(FaultDevice(image))
    assert any("backup" in note for note in engine.notes)
    assert [p.kind for p in check_image(FaultDevice(image))] == ["superblock"]


def test_both_superblocks_damaged_is_a_clear_format_error():
    image = fresh_image(1)
    sb, _ = read_superblock(FaultDevice(image))
    image[100] ^= 0xFF
    image[sb.backup_offset + 100] ^= 0xFF
    with pytest.raises(FormatError) as info:
        Engine.open(FaultDevice(image))
    assert "superblock" in str(info.value) and "backup" in str(info.value)


def test_an_image_of_a_newer_format_version_is_refused_by_name():
    image = fresh_image(1)
    sb, _ = read_superblock(FaultDevice(image))
    newer = replace(sb, version=sb.version + 1).encode()
    image[:BLOCK_SIZE] = newer
    image[sb.backup_offset : sb.backup_offset + BLOCK_SIZE] = newer
    with pytest.raises(UnsupportedVersion) as info:
        Engine.open(FaultDevice(image))
    assert "version" in str(info.value)


def test_an_image_with_an_erased_journal_refuses_to_open():
    image = fresh_image(1)
    sb, _ = read_superblock(FaultDevice(image))
    image[sb.journal_offset : sb.journal_offset + sb.journal_size] = bytes(sb.journal_size)
    with pytest.raises(JournalCorrupt) as info:
        Engine.open(FaultDevice(image))
    assert info.value.errno == errno.EIO
    assert "journal" in str(info.value)

"""Bucket space (pyfs/engine/alloc.py, pyfs/engine/engine.py): accounting, reuse rules, ENOSPC.

Promises proven here: live counts follow the extents in the same
transaction; a full image gives a clean ENOSPC with nothing corrupted; space
freed by deletes is usable again; freed space is not reused before the
freeing transaction is durable (DESIGN.md invariant 3).
"""

import errno

import pytest

from pyfs.engine.check import check_engine, check_image
from pyfs.engine.fault_device import FaultDevice
from pyfs.engine.engine import Engine
from pyfs.format.records import BucketKind, Extent, Tree
from tools.crashsim import fresh_image

REGION = 64 << 10


def write_extent(engine: Engine, ino: int, offset: int, length: int = REGION, fill: int = 0xAB) -> Extent:
    addr = engine.allocate_data(length)
    data = bytes([fill]) * length
    csum = engine.write_data(addr, data)
    ext = Extent(length=length, region_addr=addr, region_len=length, region_csum=csum)
    with engine.transaction() as t:
        t.put(Tree.EXTENTS, (ino, offset), ext.encode())
        t.adjust_bucket_usage(addr, length)
    return ext


def delete_extents(engine: Engine) -> int:
    with engine.transaction() as t:
        found = list(t.scan(Tree.EXTENTS))
        for key, raw in found:
            ext = Extent.decode(raw)
            t.delete(Tree.EXTENTS, key)
            t.adjust_bucket_usage(ext.addr, -ext.length)
    return len(found)


def fill_until_enospc(engine: Engine) -> int:
    written = 0
    with pytest.raises(OSError) as info:
        for i in range(100_000):
            write_extent(engine, 7, i * REGION)
            written += 1
    assert info.value.errno == errno.ENOSPC
    return written


def test_bucket_live_count_follows_extents_in_the_same_transaction():
    engine = Engine.open(FaultDevice(fresh_image(1)))
    ext = write_extent(engine, 5, 0, 12288)
    bucket = engine.sb.bucket_of(ext.addr)
    info = engine.space.info(bucket)
    assert (info.live_bytes, info.kind) == (12288, BucketKind.DATA)
    delete_extents(engine)
    assert engine.space.info(bucket).live_bytes == 0
    assert check_engine(engine) == []


def test_full_image_gives_enospc_and_space_is_usable_again_after_deletes():
    dev = FaultDevice(fresh_image(2))
    engine = Engine.open(dev)
    first = fill_until_enospc(engine)
    assert first > 10
    assert check_engine(engine) == []
    # the engine is still writable: ENOSPC is not an I/O failure
    with engine.transaction() as t:
        t.put(Tree.MISC, ("still", "writable"), b"yes")
    assert delete_extents(engine) == first
    second = fill_until_enospc(engine)
    assert second == first
    assert check_engine(engine) == []
    engine.close()
    assert check_image(FaultDevice(dev.durable_image())) == []


def test_metadata_growth_stops_with_enospc_but_deletes_still_work():
    dev = FaultDevice(fresh_image(3))
    engine = Engine.open(dev)
    fill_until_enospc(engine)
    with pytest.raises(OSError) as info:
        for i in range(200_000):
            with engine.transaction() as t:
                t.put(Tree.INODES, (i,), bytes(200))
    assert info.value.errno == errno.ENOSPC
    delete_extents(engine)
    engine.flush()
    with engine.transaction() as t:
        t.put(Tree.INODES, (10**9,), b"fits again")
    assert check_engine(engine) == []
    engine.close()
    assert check_image(FaultDevice(dev.durable_image())) == []


def test_space_freed_by_a_transaction_is_not_reused_before_it_is_durable():
    engine = Engine.open(FaultDevice(fresh_image(4)))
    size = engine.sb.bucket_size
    exts = []
    with pytest.raises(OSError):
        while True:
            exts.append(write_extent(engine, 1, len(exts) * size, size))
    engine.flush()
    victim = exts[0]
    bucket = engine.sb.bucket_of(victim.addr)
    with engine.transaction() as t:
        t.delete(Tree.EXTENTS, (1, 0))
        t.adjust_bucket_usage(victim.addr, -size)
    durable = engine.journal.durable_seq
    assert engine.space.live[bucket] == 0
    assert not engine.space.is_free(bucket, durable)
    engine.space.reserve = 0  # only the emptied bucket could be handed out now
    taken = []
    try:
        while True:
            addr = engine.space.allocate(BucketKind.DATA, size, durable, engine.journal.next_seq)
            taken.append(engine.sb.bucket_of(addr))
    except OSError:
        pass
    assert bucket not in taken
    assert len(taken) == len(set(taken))
    engine.flush()
    assert engine.space.is_free(bucket, engine.journal.durable_seq)


def test_a_bucket_given_up_before_its_transaction_commits_is_not_handed_out_again():
    engine = Engine.open(FaultDevice(fresh_image(5)))
    size = engine.sb.bucket_size
    # one operation reserving several whole buckets before it commits
    addrs = [engine.allocate_data(size) for _ in range(4)]
    buckets = [engine.sb.bucket_of(a) for a in addrs]
    assert len(set(buckets)) == 4
    durable = engine.journal.durable_seq
    assert not any(engine.space.is_free(b, durable) for b in buckets)
    with engine.transaction() as t:
        for i, addr in enumerate(addrs):
            csum = engine.write_data(addr, bytes([i]) * size)
            t.put(Tree.EXTENTS, (9, i * size), Extent(size, addr, size, csum).encode())
            t.adjust_bucket_usage(addr, size)
    assert check_engine(engine) == []

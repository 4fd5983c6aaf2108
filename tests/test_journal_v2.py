"""Format v2's journal: checkpoint slots, the O(1) open, one flush per fsync, and prev-linked chains.

Promises proven here (docs/format.md "Checkpoint slots", DESIGN.md invariants 1, 4, 5):
- pyfs/engine/journal_scan.py (`walk_journal`): a clean image opens from the
  checkpoint its slot names, reading a bounded part of the journal whatever
  its size and however often it wrapped; after a crash it reads the entries
  since the checkpoint; a torn slot falls back to the other slot, a slot whose
  entry was overwritten is ignored, and with no usable slot the region is
  scanned.
- pyfs/engine/journal_writer.py: one device flush per fsync (data and entry
  together); a checkpoint's slot is written after its entry is durable.
- Replay verifies the data regions of entries not known durable: power cut
  with the data lost or torn while the entry landed ends the chain there
  (tools/crashsim.py `explore_lost_data`), and torn slot writes lose nothing
  (`explore_slot_tears`).
"""

from __future__ import annotations

import uuid

import pytest

from pyfs.engine.engine import Engine
from pyfs.engine.fault_device import FaultDevice
from pyfs.format.journal_entry import CheckpointSlot
from pyfs.format.records import Tree
from pyfs.format.superblock import plan_geometry
from tools.crashsim import explore_lost_data, explore_slot_tears

IMAGE_SIZE = 8 << 20


class CountingDevice(FaultDevice):
    """A FaultDevice that counts the bytes read from the journal region."""

    journal_range = (0, 0)
    journal_bytes_read = 0

    def pread(self, offset: int, length: int) -> bytes:
        lo, hi = self.journal_range
        self.journal_bytes_read += max(0, min(hi, offset + length) - max(lo, offset))
        return super().pread(offset, length)


def new_engine(journal_size: int = 1 << 20, version: int = 2) -> tuple[Engine, FaultDevice]:
    sb = plan_geometry(IMAGE_SIZE, uuid=uuid.UUID(int=0x5107).bytes, bucket_size=64 << 10,
                       journal_size=journal_size, node_size=4096, version=version)
    dev = FaultDevice(bytearray(IMAGE_SIZE))
    return Engine.format(dev, sb), dev


def fill(eng: Engine, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with eng.transaction() as t:
            t.put(Tree.INODES, (i,), b"v" * 100)
        if i % 7 == 0:
            eng.flush()


def visible(eng: Engine) -> dict:
    return dict(eng.trees[Tree.INODES].scan())


def counting_open(image: bytes | bytearray, eng: Engine) -> tuple[Engine, CountingDevice]:
    dev = CountingDevice(image)
    dev.journal_range = (eng.sb.journal_offset, eng.sb.journal_offset + eng.sb.journal_size)
    return Engine.open(dev), dev


def test_mkfs_writes_format_2_with_the_slots_before_the_journal():
    eng, dev = new_engine()
    assert eng.sb.version == 2
    assert eng.sb.journal_offset == 3 * eng.sb.block_size
    slots = [CheckpointSlot.decode(bytes(dev.durable_image()[o : o + 4096]), eng.seed) for o in eng.sb.slot_offsets]
    assert slots[0] is not None and slots[0].seq == eng.journal.checkpoint_seq


def test_a_clean_open_reads_a_bounded_part_of_the_journal_however_full_it_was():
    eng, dev = new_engine(journal_size=4 << 20)
    fill(eng, 6000)  # wraps the 4 MiB journal more than once
    expected = visible(eng)
    eng.close()
    again, counted = counting_open(dev.durable_image(), eng)
    assert visible(again) == expected
    assert again.replayed_entries == 0
    assert counted.journal_bytes_read <= 3 * (256 << 10) < eng.sb.journal_size


def test_after_a_crash_the_open_reads_about_the_entries_since_the_checkpoint():
    eng, dev = new_engine(journal_size=4 << 20)
    fill(eng, 3000)
    eng.checkpoint()
    fill(eng, 50, start=10_000)
    eng.flush()
    expected = visible(eng)
    again, counted = counting_open(dev.durable_image(), eng)
    assert visible(again) == expected
    assert again.replayed_entries >= 50
    assert counted.journal_bytes_read < eng.sb.journal_size // 2


def test_a_torn_newest_slot_opens_from_the_other_slot():
    eng, dev = new_engine()
    fill(eng, 100)
    eng.checkpoint()
    fill(eng, 10, start=500)
    eng.flush()
    expected = visible(eng)
    image = dev.durable_image()
    newest = eng.sb.slot_offsets[1 - eng.journal.next_slot]
    image[newest + 100] ^= 0x40  # the slot no longer checks
    again = Engine.open(FaultDevice(image))
    assert visible(again) == expected
    assert again.journal_scan.slot_index == eng.sb.slot_offsets.index(
        eng.sb.slot_offsets[eng.journal.next_slot])


def older_slot_image(eng: Engine, dev: FaultDevice) -> tuple[bytearray, CheckpointSlot]:
    """The durable image with the newest slot lost; and the older slot, which the open must fall back to."""
    image = dev.durable_image()
    older = eng.sb.slot_offsets[eng.journal.next_slot]
    slot = CheckpointSlot.decode(bytes(image[older : older + 4096]), eng.seed)
    assert slot is not None and slot.seq < eng.journal.checkpoint_seq
    newest = eng.sb.slot_offsets[1 - eng.journal.next_slot]
    image[newest : newest + 4096] = bytes(4096)
    return image, slot


def test_an_older_slot_leads_through_later_checkpoints_to_the_newest_state():
    eng, dev = new_engine(journal_size=256 << 10)
    fill(eng, 1500)
    eng.flush()
    expected = visible(eng)
    image, slot = older_slot_image(eng, dev)
    again = Engine.open(FaultDevice(image))
    assert visible(again) == expected
    assert again.journal_scan.checkpoint.seq > slot.seq


def test_a_slot_naming_an_overwritten_entry_is_ignored_and_without_slots_the_region_is_scanned():
    eng, dev = new_engine(journal_size=256 << 10)
    fill(eng, 1500)
    eng.flush()
    expected = visible(eng)
    image, slot = older_slot_image(eng, dev)
    at = eng.sb.journal_offset + slot.offset
    image[at : at + slot.length] = bytes(slot.length)  # what a later lap of the journal does to it
    again = Engine.open(FaultDevice(image))
    assert visible(again) == expected
    assert any("no longer there" in n for n in again.notes)
    assert any("scanned" in n for n in again.notes)


def test_an_fsync_of_written_data_is_one_device_flush():
    eng, dev = new_engine()
    for i in range(5):
        addr = eng.allocate_data(4096)
        eng.write_data(addr, bytes([i]) * 4096)
        with eng.transaction() as t:
            t.put(Tree.INODES, (i,), b"x")
        before = dev.flush_count
        eng.flush()
        assert dev.flush_count - before == 1


def test_a_version_1_engine_still_flushes_data_before_the_entries():
    eng, dev = new_engine(version=1)
    addr = eng.allocate_data(4096)
    eng.write_data(addr, b"d" * 4096)
    with eng.transaction() as t:
        t.put(Tree.INODES, (1,), b"x")
    before = dev.flush_count
    eng.flush()
    assert dev.flush_count - before == 2
    eng.close()
    again = Engine.open(FaultDevice(dev.durable_image()))
    assert again.sb.version == 1 and visible(again) == {next(iter(visible(eng))): b"x"}


@pytest.mark.parametrize("seed", [1, 2])
def test_data_lost_or_torn_while_its_entry_landed_ends_the_chain_there(seed):
    checked, errors = explore_lost_data(seed, transactions=250)
    assert checked > 30
    assert errors == []


@pytest.mark.parametrize("seed", [1])
def test_a_power_cut_during_a_slot_write_loses_nothing_acknowledged(seed):
    checked, errors = explore_slot_tears(seed, transactions=250)
    assert checked > 30
    assert errors == []

"""Reading the journal at mount: which entries to replay, and where to go on writing.

Promises (DESIGN.md invariants 1, 2, 4, 5):
- Replay starts at the newest valid checkpoint and takes every following
  entry with consecutive seqs (in format v2 also linked by `prev`, the
  checksum of its predecessor); the state it yields is therefore the state
  after some prefix of the committed transactions.
- Format v2 (`walk_journal`): a checkpoint slot names the newest checkpoint
  entry, verified by its checksum; the chain is followed from there by
  reading only the places the writer can have put the next entry (right
  after the previous one, at the next sector, at the start of the region).
  A clean image therefore opens in O(1) and a crashed one in time
  proportional to the entries since the checkpoint.  A torn or stale slot
  falls back to the other slot, and with neither to a scan of the region.
- The first missing seq after that checkpoint ends the chain.  If some valid
  entry proves (by its `durable_seq`) that the missing entry reached the disk,
  the journal is corrupt and `JournalCorrupt` is raised: mount refuses and
  fsck must decide.  Otherwise it is a torn tail from a crash: the entries
  after it were never acknowledged and are dropped.
- v2 entries name the data regions written with them under one flush: the
  regions of every entry not known durable (above the highest `durable_seq`
  seen) are verified, and the first entry whose data does not verify ends
  the chain like a torn entry (`verify_chain_data`, invariant 4).
- Garbage never raises anything but `JournalCorrupt`.
- fsck's salvage mode (`salvage=True`) replays up to the damaged entry
  instead of refusing, and says so in `ScanResult.corruption`; an image
  without any valid checkpoint still raises.

Nothing is applied here: `replay.py` re-inserts the chain.  Proven by
tests/test_journal.py, tests/test_journal_v2.py and tests/test_crash.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .device import SECTOR, Device
from ..format.checksum import checksum
from ..format.errors import FormatError
from ..format.journal_entry import (
    HEADER_SIZE,
    MAGIC,
    CheckpointSlot,
    JournalEntry,
    KeyUpdate,
    decode_entry,
    decode_key_list,
)
from ..format.superblock import Superblock

READ_BLOCK = 256 << 10  # the walk reads the region in blocks of this size
PROOF_CHUNK = 64 << 10  # the search for proof after a torn tail stops at a zero chunk of this size


class JournalCorrupt(FormatError):
    """The journal cannot be replayed safely; fsck is needed."""


@dataclass
class Located:
    """A valid entry found in the region.  The scan decodes headers only;
    `keys()` decodes the key list when replay needs it, one entry at a time,
    so memory does not grow with the stale part of the region.  An
    out-of-line key list is read from its data regions on `device`."""

    entry: JournalEntry
    offset: int  # relative to the start of the journal region
    length: int
    source: bytes | None = None  # the bytes it was found in (for `keys`)
    seed: int = 0
    source_pos: int | None = None  # where the entry starts in `source` (None: at `offset`)
    device: Device | None = None

    def keys(self) -> list[KeyUpdate]:
        if self.entry.out_of_line:
            return self._out_of_line_keys()
        if self.entry.keys is not None:
            return self.entry.keys
        assert self.source is not None
        at = self.offset if self.source_pos is None else self.source_pos
        decoded = decode_entry(self.source, at, self.seed)
        if decoded is None or decoded[0].keys is None:
            raise JournalCorrupt(f"journal entry {self.entry.seq} changed while it was being read")
        return decoded[0].keys

    def _out_of_line_keys(self) -> list[KeyUpdate]:
        if self.device is None:
            raise JournalCorrupt(f"journal entry {self.entry.seq}: its key list is out of line and no device was given")
        parts = []
        for addr, length, csum in self.entry.key_lists:
            raw = read_region(self.device, addr, length)
            if raw is None or checksum(raw, self.seed) != csum:
                raise JournalCorrupt(f"journal entry {self.entry.seq}: out-of-line key list at {addr:#x} is damaged")
            parts.append(raw)
        try:
            return decode_key_list(b"".join(parts))
        except FormatError as exc:
            raise JournalCorrupt(f"journal entry {self.entry.seq}: {exc}") from None

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class ScanResult:
    chain: list[Located]          # newest checkpoint first, then consecutive seqs
    max_seq_seen: int             # highest seq of any valid entry seen
    dropped: list[int] = field(default_factory=list)  # valid seqs after the torn tail
    torn_at: int | None = None    # first missing seq, when entries after it were dropped
    problems: list[str] = field(default_factory=list)  # oddities that are not corruption
    corruption: str | None = None  # salvage only: why the chain was cut short
    proven_seq: int = 0           # highest durable_seq any valid entry carries
    slot_index: int | None = None  # v2: the slot the walk started from (None: a scan of the region)
    slot_seq: int = 0             # v2: the checkpoint that slot names (the chain may start at a later one)
    data_cut: int | None = None   # v2: seq of the entry whose data did not verify, ending the chain

    @property
    def checkpoint(self) -> JournalEntry:
        return self.chain[0].entry

    @property
    def last_seq(self) -> int:
        return self.chain[-1].entry.seq

    @property
    def resume_offset(self) -> int:
        """Where the next write goes: after the last chain entry, sector aligned."""
        end = self.chain[-1].end
        return end + (-end % SECTOR)

    @property
    def needs_replay(self) -> bool:
        return len(self.chain) > 1 or not self.checkpoint.is_clean

    @property
    def clean(self) -> bool:
        """Closed cleanly: the checkpoint is CLEAN and nothing valid follows it."""
        return (self.checkpoint.is_clean and len(self.chain) == 1 and not self.dropped
                and self.corruption is None and self.max_seq_seen == self.last_seq)


def read_region(device: Device, addr: int, length: int) -> bytes | None:
    try:
        return device.pread(addr, length)
    except OSError:
        return None


def find_entries(region: bytes, seed: int, device: Device | None = None) -> list[Located]:
    """Every valid entry in `region`, in region order."""
    found: list[Located] = []
    pos = region.find(MAGIC)
    while pos >= 0:
        decoded = decode_entry(region, pos, seed, with_keys=False)
        if decoded is None:
            pos = region.find(MAGIC, pos + 1)
            continue
        entry, length = decoded
        found.append(Located(entry, pos, length, region, seed, device=device))
        pos = region.find(MAGIC, pos + length)
    return found


def scan_journal(device: Device, sb: Superblock, seed: int, salvage: bool = False) -> ScanResult:
    """Scan the whole region (format v1, fsck, and v2 when no slot can be used)."""
    try:
        region = device.pread(sb.journal_offset, sb.journal_size)
    except OSError as exc:
        raise JournalCorrupt(f"cannot read the journal: {exc}") from None
    return plan_replay(find_entries(region, seed, device), salvage, device, seed)


def _links(prev: Located, loc: Located) -> bool:
    """`loc` may follow `prev` in a chain: v1 entries by seq alone, v2 also by `prev`."""
    return loc.entry.prev is None or loc.entry.prev == prev.entry.csum


def plan_replay(found: list[Located], salvage: bool = False, device: Device | None = None,
                seed: int = 0) -> ScanResult:
    """Choose the replay chain among the valid entries found in the region.

    With `salvage` (fsck only), a corrupt chain is cut before the first entry
    that cannot be replayed; the valid entries after it are dropped and the
    reason is kept in `corruption`.  With a `device`, the data regions of
    entries not known durable are verified (`verify_chain_data`).
    """
    if not found:
        raise JournalCorrupt("the journal holds no valid entry (not even a checkpoint)")
    by_seq: dict[int, list[Located]] = {}
    problems: list[str] = []
    for loc in found:
        copies = by_seq.setdefault(loc.entry.seq, [])
        if copies and loc.entry.prev is None:
            problems.append(f"journal seq {loc.entry.seq} appears twice; using the copy at offset {copies[0].offset}")
            continue
        copies.append(loc)
    checkpoints = [s for s, locs in by_seq.items() if any(loc.entry.is_checkpoint for loc in locs)]
    if not checkpoints:
        raise JournalCorrupt("the journal holds no valid checkpoint entry")
    start = max(checkpoints)
    chain = [next(loc for loc in by_seq[start] if loc.entry.is_checkpoint)]
    seq = start + 1
    corruption: str | None = None
    while True:
        nxt = next((loc for loc in by_seq.get(seq, []) if _links(chain[-1], loc)), None)
        if nxt is None:
            break
        entry = nxt.entry
        if entry.last_seq > seq or entry.last_seq < start:
            corruption = f"journal entry {seq} names checkpoint {entry.last_seq}, outside the chain from {start}"
            if not salvage:
                raise JournalCorrupt(corruption)
            break
        chain.append(nxt)
        seq += 1
    in_chain = {id(loc) for loc in chain}
    beyond = [loc for locs in by_seq.values() for loc in locs if id(loc) not in in_chain and loc.entry.seq >= seq]
    result = ScanResult(chain, max(by_seq), problems=problems, corruption=corruption,
                        proven_seq=max(loc.entry.durable_seq for loc in found))
    return finish_chain(result, beyond, salvage, device, seed)


def finish_chain(result: ScanResult, beyond: list[Located], salvage: bool, device: Device | None,
                 seed: int) -> ScanResult:
    """Verify the chain's data, then tell a torn tail (dropped) from proven corruption (refused)."""
    if device is not None:
        verify_chain_data(result, device, seed)
    seq = result.last_seq + 1
    dropped = sorted({loc.entry.seq for loc in beyond if loc.entry.seq >= seq})
    if result.data_cut is not None:
        dropped = sorted(set(dropped) | {result.data_cut})
    if result.corruption is None and seq <= result.proven_seq:
        result.corruption = (
            f"journal entry {seq} is missing or damaged, but a later entry proves it was written "
            f"(durable up to {result.proven_seq}); run fsck"
        )
        if not salvage:
            raise JournalCorrupt(result.corruption)
    result.dropped = dropped
    result.torn_at = seq if dropped else None
    return result


def verify_chain_data(result: ScanResult, device: Device, seed: int) -> None:
    """Cut the chain before the first entry not known durable whose data regions do not verify.

    An entry is known durable when some valid entry's `durable_seq` covers
    it; only entries above that were possibly written under a flush that did
    not complete, so only theirs are read back (invariant 4).
    """
    chain = result.chain
    for i in range(1, len(chain)):
        entry = chain[i].entry
        if entry.seq <= result.proven_seq:
            continue
        for addr, length, csum in (*entry.regions, *entry.key_lists):
            raw = read_region(device, addr, length)
            if raw is None or checksum(raw, seed) != csum:
                result.data_cut = entry.seq
                result.problems.append(
                    f"journal entry {entry.seq}: its data region at {addr:#x} did not reach the disk; "
                    "the chain ends before it")
                del chain[i:]
                return


# -- the v2 walk from a checkpoint slot -----------------------------------------------


class RegionReader:
    """The journal region read lazily, in blocks, with the entries decoded at given offsets."""

    def __init__(self, device: Device, sb: Superblock, seed: int) -> None:
        self.device = device
        self.base = sb.journal_offset
        self.size = sb.journal_size
        self.seed = seed
        self.blocks: dict[int, bytes] = {}

    def get(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            index, inner = divmod(offset, READ_BLOCK)
            block = self.blocks.get(index)
            if block is None:
                start = index * READ_BLOCK
                block = self.device.pread(self.base + start, min(READ_BLOCK, self.size - start))
                self.blocks[index] = block
            piece = block[inner : inner + length]
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out)

    def entry_at(self, offset: int) -> Located | None:
        """The valid entry starting at `offset` of the region, or None."""
        if offset < 0 or offset + HEADER_SIZE > self.size:
            return None
        head = self.get(offset, HEADER_SIZE)
        if head[:4] != MAGIC:
            return None
        length = HEADER_SIZE + int.from_bytes(head[4:8], "little")
        if offset + length > self.size:
            return None
        raw = self.get(offset, length)
        decoded = decode_entry(raw, 0, self.seed, with_keys=False)
        if decoded is None:
            return None
        return Located(decoded[0], offset, length, raw, self.seed, source_pos=0, device=self.device)


def read_slots(device: Device, sb: Superblock, seed: int) -> list[CheckpointSlot | None]:
    slots: list[CheckpointSlot | None] = []
    for offset in sb.slot_offsets:
        try:
            slots.append(CheckpointSlot.decode(device.pread(offset, sb.block_size), seed))
        except OSError:
            slots.append(None)
    return slots


def _slot_start(reader: RegionReader, slot: CheckpointSlot) -> Located | None:
    """The checkpoint entry a slot names, if it is still there as the slot describes it."""
    loc = reader.entry_at(slot.offset)
    if (loc is None or loc.length != slot.length or loc.entry.seq != slot.seq
            or loc.entry.csum != slot.entry_csum or not loc.entry.is_checkpoint):
        return None
    return loc


def _successor(reader: RegionReader, last: Located) -> Located | None:
    """The entry after `last`: packed right after it, at the next sector (a new flush), or at the
    start of the region (an entry that did not fit before its end); it must link to `last`."""
    end = last.end
    seen: set[int] = set()
    for at in (end, end + (-end % SECTOR), 0):
        if at in seen:
            continue
        seen.add(at)
        loc = reader.entry_at(at)
        if loc is not None and loc.entry.seq == last.entry.seq + 1 and loc.entry.prev == last.entry.csum:
            return loc
    return None


def _beyond(reader: RegionReader, chain: list[Located]) -> list[Located]:
    """Valid entries after a chain's end that could prove a missing entry flushed.

    Searches forward from the chain's end, wrapping, until an entry older
    than the chain (the stale part of the region), a chunk of zeros (never
    written) or the chain's checkpoint.
    """
    last = chain[-1]
    first_seq = chain[0].entry.seq
    out: list[Located] = []
    pos = last.end
    remaining = (chain[0].offset - pos) % reader.size
    while remaining > 0:
        if pos >= reader.size:
            pos = 0
        n = min(PROOF_CHUNK, reader.size - pos, remaining)
        chunk = reader.get(pos, n)
        if not any(chunk):
            break
        at = chunk.find(MAGIC)
        while at >= 0:
            loc = reader.entry_at(pos + at)
            if loc is not None:
                if loc.entry.seq < first_seq:
                    return out
                if loc.entry.seq > last.entry.seq:
                    out.append(loc)
            at = chunk.find(MAGIC, at + 1)
        pos += n
        remaining -= n
    return out


def walk_journal(device: Device, sb: Superblock, seed: int, salvage: bool = False) -> ScanResult:
    """The chain from the checkpoint a slot names (format v2); a region scan if no slot is usable."""
    reader = RegionReader(device, sb, seed)
    slots = read_slots(device, sb, seed)
    problems: list[str] = []
    start: Located | None = None
    slot_index: int | None = None
    try:
        for index in sorted((i for i, s in enumerate(slots) if s is not None), key=lambda i: -slots[i].seq):
            start = _slot_start(reader, slots[index])
            if start is not None:
                slot_index = index
                break
            problems.append(f"checkpoint slot {'AB'[index]} names entry {slots[index].seq}, which is no longer there")
    except OSError as exc:
        raise JournalCorrupt(f"cannot read the journal: {exc}") from None
    if start is None:
        result = scan_journal(device, sb, seed, salvage)
        result.problems[:0] = problems + ["no checkpoint slot is usable; the journal region was scanned"]
        return result
    chain = [start]
    try:
        while (nxt := _successor(reader, chain[-1])) is not None:
            if nxt.entry.is_checkpoint:
                chain = [nxt]
            elif nxt.entry.last_seq != chain[0].entry.seq:
                corruption = (f"journal entry {nxt.entry.seq} names checkpoint {nxt.entry.last_seq}, "
                              f"outside the chain from {chain[0].entry.seq}")
                if not salvage:
                    raise JournalCorrupt(corruption)
                break
            else:
                chain.append(nxt)
        quiet = (len(chain) == 1 and chain[0].entry.is_clean
                 and all(reader.get(at, 4) != MAGIC for at in _probe_offsets(chain[0], reader.size)))
        beyond = [] if quiet else _beyond(reader, chain)
    except OSError as exc:
        raise JournalCorrupt(f"cannot read the journal: {exc}") from None
    seen = [loc.entry for loc in (*chain, *beyond)]
    result = ScanResult(chain, max(e.seq for e in seen), problems=problems,
                        proven_seq=max(e.durable_seq for e in seen), slot_index=slot_index,
                        slot_seq=start.entry.seq)
    return finish_chain(result, beyond, salvage, device, seed)


def _probe_offsets(loc: Located, size: int) -> list[int]:
    end = loc.end
    return [at for at in (end, end + (-end % SECTOR)) if at + 4 <= size]

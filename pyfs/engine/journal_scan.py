"""Reading the journal at mount: which entries to replay, and where to go on writing.

Promises (DESIGN.md invariants 1, 2, 5):
- Replay starts at the newest valid checkpoint and takes every following
  entry with consecutive seqs; the state it yields is therefore the state
  after some prefix of the committed transactions.
- The first missing seq after that checkpoint ends the chain.  If some valid
  entry proves (by its `durable_seq`) that the missing entry reached the disk,
  the journal is corrupt and `JournalCorrupt` is raised: mount refuses and
  fsck must decide.  Otherwise it is a torn tail from a crash: the entries
  after it were never acknowledged and are dropped.
- Garbage never raises anything but `JournalCorrupt`.
- fsck's salvage mode (`salvage=True`) replays up to the damaged entry
  instead of refusing, and says so in `ScanResult.corruption`; an image
  without any valid checkpoint still raises.

Nothing is applied here: `replay.py` re-inserts the chain.  Proven by
tests/test_journal.py and tests/test_crash.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .device import SECTOR, Device
from ..format.errors import FormatError
from ..format.journal_entry import MAGIC, JournalEntry, KeyUpdate, decode_entry
from ..format.superblock import Superblock


class JournalCorrupt(FormatError):
    """The journal cannot be replayed safely; fsck is needed."""


@dataclass
class Located:
    """A valid entry found in the region.  The scan decodes headers only;
    `keys()` decodes the key list when replay needs it, one entry at a time,
    so memory does not grow with the stale part of the region."""

    entry: JournalEntry
    offset: int  # relative to the start of the journal region
    length: int
    source: bytes | None = None  # the region it was found in (for `keys`)
    seed: int = 0

    def keys(self) -> list[KeyUpdate]:
        if self.entry.keys is not None:
            return self.entry.keys
        assert self.source is not None
        decoded = decode_entry(self.source, self.offset, self.seed)
        if decoded is None or decoded[0].keys is None:
            raise JournalCorrupt(f"journal entry {self.entry.seq} changed while it was being read")
        return decoded[0].keys


@dataclass
class ScanResult:
    chain: list[Located]          # newest checkpoint first, then consecutive seqs
    max_seq_seen: int             # highest seq of any valid entry in the region
    dropped: list[int] = field(default_factory=list)  # valid seqs after the torn tail
    torn_at: int | None = None    # first missing seq, when entries after it were dropped
    problems: list[str] = field(default_factory=list)  # oddities that are not corruption
    corruption: str | None = None  # salvage only: why the chain was cut short

    @property
    def checkpoint(self) -> JournalEntry:
        return self.chain[0].entry

    @property
    def last_seq(self) -> int:
        return self.chain[-1].entry.seq

    @property
    def resume_offset(self) -> int:
        """Where the next write goes: after the last chain entry, sector aligned."""
        last = self.chain[-1]
        end = last.offset + last.length
        return end + (-end % SECTOR)

    @property
    def needs_replay(self) -> bool:
        return len(self.chain) > 1 or not self.checkpoint.is_clean


def find_entries(region: bytes, seed: int) -> list[Located]:
    """Every valid entry in `region`, in region order."""
    found: list[Located] = []
    pos = region.find(MAGIC)
    while pos >= 0:
        decoded = decode_entry(region, pos, seed, with_keys=False)
        if decoded is None:
            pos = region.find(MAGIC, pos + 1)
            continue
        entry, length = decoded
        found.append(Located(entry, pos, length, region, seed))
        pos = region.find(MAGIC, pos + length)
    return found


def scan_journal(device: Device, sb: Superblock, seed: int, salvage: bool = False) -> ScanResult:
    try:
        region = device.pread(sb.journal_offset, sb.journal_size)
    except OSError as exc:
        raise JournalCorrupt(f"cannot read the journal: {exc}") from None
    return plan_replay(find_entries(region, seed), salvage)


def plan_replay(found: list[Located], salvage: bool = False) -> ScanResult:
    """Choose the replay chain among the valid entries found in the region.

    With `salvage` (fsck only), a corrupt chain is cut before the first entry
    that cannot be replayed; the valid entries after it are dropped and the
    reason is kept in `corruption`.
    """
    if not found:
        raise JournalCorrupt("the journal holds no valid entry (not even a checkpoint)")
    by_seq: dict[int, Located] = {}
    problems: list[str] = []
    for loc in found:
        seq = loc.entry.seq
        if seq in by_seq:
            problems.append(f"journal seq {seq} appears twice; using the copy at offset {by_seq[seq].offset}")
            continue
        by_seq[seq] = loc
    checkpoints = [s for s, loc in by_seq.items() if loc.entry.is_checkpoint]
    if not checkpoints:
        raise JournalCorrupt("the journal holds no valid checkpoint entry")
    start = max(checkpoints)
    proven = max(loc.entry.durable_seq for loc in by_seq.values())
    max_seen = max(by_seq)
    chain = [by_seq[start]]
    seq = start + 1
    corruption: str | None = None
    while seq in by_seq:
        entry = by_seq[seq].entry
        if entry.last_seq > seq or entry.last_seq < start:
            corruption = f"journal entry {seq} names checkpoint {entry.last_seq}, outside the chain from {start}"
            if not salvage:
                raise JournalCorrupt(corruption)
            break
        chain.append(by_seq[seq])
        seq += 1
    dropped = sorted(s for s in by_seq if s > seq or (corruption is not None and s == seq))
    if corruption is None and seq <= proven:
        corruption = (
            f"journal entry {seq} is missing or damaged, but a later entry proves it was written "
            f"(durable up to {proven}); run fsck"
        )
        if not salvage:
            raise JournalCorrupt(corruption)
    return ScanResult(chain, max_seen, dropped, seq if dropped else None, problems, corruption)

"""Reading an image for fsck: superblocks, journal, btrees and replay, all in memory.

Promises:
- Nothing here writes.  `read_image` and `read_trees` never raise for a
  damaged image except `Unusable` (not pyfs, no usable superblock, no
  checkpoint to start from: there is nothing fsck could check); every other
  damage becomes a `Finding` whose action plans the repair.
- The keys `read_trees` returns are the filesystem as mount would see it
  after replay: the newest checkpoint's btrees (every entry that is still
  readable) with the journal chain applied in seq order, as plain
  re-insertion (DESIGN.md invariant 2).  A damaged entry proven flushed ends
  the chain (salvage); so does an entry the engine could not replay.
- Each btree node is read once (`check.walk_tree` does the structural checks
  on the way).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..engine.btree import BTree
from ..engine.node_store import NodeStore, Ptr
from ..engine.check import Problem, walk_tree
from ..engine.device import Device
from ..format.checksum import seed_from_uuid
from ..format.errors import FormatError, NotPyfs, UnsupportedVersion
from ..format.journal_entry import MAGIC, JournalEntry
from ..format.keys import decode_key
from ..format.node import LEAF_ENTRY_OVERHEAD
from ..format.records import NODE_TREES, AllocInfo, Tree
from ..format.superblock import BLOCK_SIZE, Superblock
from ..engine.journal_scan import JournalCorrupt, ScanResult, find_entries, plan_replay
from .findings import Finding, RepairAction, Repairs
from .state import TREE_NAMES

Progress = Callable[[int], None]


class Unusable(Exception):
    """fsck cannot check this image at all (exit 8)."""


# -- superblocks ---------------------------------------------------------------------


def _decode_copy(device: Device, offset: int) -> tuple[Superblock | None, FormatError | None]:
    try:
        return Superblock.decode(device.pread(offset, BLOCK_SIZE)), None
    except UnsupportedVersion:
        raise
    except FormatError as exc:
        return None, exc
    except OSError as exc:
        return None, FormatError(f"cannot read it: {exc.strerror or exc}")


def read_superblocks(device: Device) -> tuple[Superblock, list[Finding]]:
    """The superblock to use and a finding for each damaged copy (repair: rewrite it from the good one)."""
    if device.size < 2 * BLOCK_SIZE:
        raise Unusable(f"not a pyfs image: only {device.size} bytes")
    try:
        primary, primary_err = _decode_copy(device, 0)
        backup_at = primary.backup_offset if primary else device.size - device.size % BLOCK_SIZE - BLOCK_SIZE
        backup, backup_err = _decode_copy(device, backup_at) if backup_at >= BLOCK_SIZE else (None, None)
    except UnsupportedVersion as exc:
        raise Unusable(str(exc)) from None
    combined = None
    if primary is None and backup is None:
        if isinstance(primary_err, NotPyfs) and (backup_err is None or isinstance(backup_err, NotPyfs)):
            raise Unusable("not a pyfs image (no superblock at the start or the end)")
        combined = _combine(device, backup_at)
        if combined is None:
            raise Unusable(f"no usable superblock: primary: {primary_err}; backup: {backup_err}")
    sb = primary or backup or combined
    assert sb is not None
    if device.size < sb.size:
        raise Unusable(f"image is truncated: {device.size} bytes, but the superblock says {sb.size}")
    findings: list[Finding] = []
    good = sb.encode()

    def rewrite(offset: int) -> RepairAction:
        return lambda rep: rep.plan_superblock_write(offset, good)

    if combined is not None:
        for offset, name, err in ((0, "primary", primary_err), (sb.backup_offset, "backup", backup_err)):
            findings.append(Finding(
                "superblock", f"{name} superblock",
                f"unusable ({err}), like the other copy; rebuilt from what is left of the two (the checksum proves it)",
                fix="rewrite it from the rebuilt superblock", safe=True, action=rewrite(offset)))
    elif primary is None:
        findings.append(Finding(
            "superblock", "primary superblock", f"unusable ({primary_err}); the backup copy is good",
            fix="rewrite it from the backup", safe=True, action=rewrite(0)))
    elif backup is None or backup != primary:
        why = f"unusable ({backup_err})" if backup is None else "differs from the primary"
        findings.append(Finding(
            "superblock", "backup superblock", why, fix="rewrite it from the primary", safe=True,
            action=rewrite(sb.backup_offset)))
    return sb, findings


MAX_COMBINED_DIFFERENCES = 16


def _combine(device: Device, backup_at: int) -> Superblock | None:
    """The superblock both damaged copies were, if taking each differing byte from one copy or the
    other gives a record that passes the checksum (damage at different places in the two)."""
    try:
        a = device.pread(0, BLOCK_SIZE)
        b = device.pread(backup_at, BLOCK_SIZE)
    except OSError:
        return None
    diff = [i for i in range(BLOCK_SIZE) if a[i] != b[i]]
    if not diff or len(diff) > MAX_COMBINED_DIFFERENCES:
        return _unflip(a) or _unflip(b)
    for mask in range(1, 1 << len(diff)):
        block = bytearray(a)
        for bit, i in enumerate(diff):
            if mask >> bit & 1:
                block[i] = b[i]
        try:
            return Superblock.decode(bytes(block))
        except FormatError:
            continue
    return _unflip(a) or _unflip(b)


def _unflip(block: bytes) -> Superblock | None:
    """The superblock `block` was before one bit of its record flipped, found by the checksum."""
    if not any(block):
        return None
    length = min(BLOCK_SIZE, 16 + int.from_bytes(block[12:16], "little") + 8)
    buf = bytearray(block)
    for i in range(length):
        for bit in range(8):
            buf[i] ^= 1 << bit
            try:
                return Superblock.decode(bytes(buf))
            except FormatError:
                pass
            finally:
                buf[i] ^= 1 << bit
    return None


# -- the journal ------------------------------------------------------------------------


@dataclass
class ImageRead:
    """An image's superblock and journal: enough for the quick check of a clean image."""

    device: Device
    sb: Superblock
    seed: int
    journal: ScanResult
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def checkpoint(self) -> JournalEntry:
        return self.journal.checkpoint

    @property
    def clean(self) -> bool:
        """Closed cleanly: the newest checkpoint is CLEAN and nothing follows it."""
        j = self.journal
        return (self.checkpoint.is_clean and len(j.chain) == 1 and not j.dropped
                and j.corruption is None and j.max_seq_seen == j.last_seq)


def read_image(device: Device) -> ImageRead:
    sb, findings = read_superblocks(device)
    seed = seed_from_uuid(sb.uuid)
    try:
        region = device.pread(sb.journal_offset, sb.journal_size)
    except OSError as exc:
        raise Unusable(f"cannot read the journal: {exc.strerror or exc}") from None
    found = find_entries(region, seed, device)
    try:
        scan = plan_replay(found, salvage=True, device=device, seed=seed)
    except JournalCorrupt as exc:
        raise Unusable(f"{exc}: fsck cannot find the btrees") from None
    img = ImageRead(device, sb, seed, scan, findings)
    img.notes.extend(f"journal: {p}" for p in scan.problems)
    if scan.corruption is not None:
        lost = len(scan.dropped)
        img.findings.append(Finding(
            "journal", f"journal entry {scan.torn_at}",
            f"{scan.corruption.removesuffix('; run fsck')}; {lost} later entries cannot be replayed",
            fix=f"replay up to entry {scan.last_seq} and drop the {lost} entries after it",
            action=lambda rep: rep.plan_salvage()))
    elif scan.dropped:
        img.notes.append(f"journal: torn tail at seq {scan.torn_at}: {len(scan.dropped)} unacknowledged "
                         "entries after it will be dropped (what a crash leaves)")
    elif any(region[at : at + len(MAGIC)] == MAGIC for at in (_chain_end(scan), scan.resume_offset)):
        img.notes.append(f"journal: torn entry after seq {scan.last_seq} is ignored (what a crash leaves)")
    return img


def _chain_end(scan: ScanResult) -> int:
    last = scan.chain[-1]
    return last.offset + last.length


# -- the btrees ---------------------------------------------------------------------------


@dataclass
class TreesRead:
    """The keys after replay, and what reading them found."""

    raw: dict[int, dict[bytes, bytes]]             # every tree, LOGGED_OPS included
    node_addrs: list[int]                          # readable nodes of the checkpoint's btrees
    checkpoint_entries: dict[int, list[tuple[bytes, bytes]]]  # damaged trees: their readable entries
    replayed: int = 0
    findings: list[Finding] = field(default_factory=list)
    damaged: set[int] = field(default_factory=set)


class _Collector:
    def __init__(self, raw: dict[int, dict[bytes, bytes]], nodes: list[int], progress: Progress | None) -> None:
        self.raw = raw
        self.nodes = nodes
        self.progress = progress

    def node(self, tree_id: int, addr: int, level: int) -> None:
        self.nodes.append(addr)

    def leaf(self, tree_id: int, keys: list[bytes], values: list[bytes]) -> None:
        self.raw[tree_id].update(zip(keys, values))
        if self.progress is not None:
            self.progress(len(keys))


def tree_total(img: ImageRead) -> int:
    """Keys the checkpoint's roots claim, for progress bars."""
    return sum(r.nkeys for r in (img.checkpoint.roots or {}).values())


def read_trees(img: ImageRead, progress: Progress | None = None) -> TreesRead:
    sb = img.sb
    store = NodeStore(img.device, sb.node_size, img.seed, cache_nodes=64)
    raw: dict[int, dict[bytes, bytes]] = {int(t): {} for t in (*NODE_TREES, Tree.LOGGED_OPS)}
    out = TreesRead(raw, [], {})
    collector = _Collector(raw, out.node_addrs, progress)
    roots = img.checkpoint.roots or {}
    for tree in NODE_TREES:
        name = TREE_NAMES[tree]
        rebuild = f"rebuild the {name} btree from its readable entries"

        def plan(rep: Repairs, t: int = int(tree)) -> None:
            rep.plan_rebuild(t)

        root = roots.get(int(tree))
        if root is None:
            problems = [Problem("node", name, f"checkpoint {img.checkpoint.seq} names no root for this btree")]
        else:
            btree = BTree(tree, store, Ptr(root.addr, root.csum), root.level, root.nkeys)
            problems = walk_tree(sb, btree, collector)
        for p in problems:
            out.findings.append(Finding(p.kind, p.where, p.message, fix=rebuild, action=plan))
        if problems:
            out.damaged.add(int(tree))
            out.checkpoint_entries[int(tree)] = list(raw[tree].items())
    raw[Tree.LOGGED_OPS].update(img.checkpoint.logged_ops or [])
    _replay(img, out, store.max_entry)
    return out


def _replay(img: ImageRead, out: TreesRead, max_entry: int) -> None:
    """Apply the journal chain to the keys, stopping before an entry the engine could not replay."""
    for loc in img.journal.chain[1:]:
        entry = loc.entry
        keys = loc.keys()
        reason = next((r for r in (_unreplayable(k, max_entry) for k in keys) if r), None)
        if reason is not None:
            rest = img.journal.last_seq - entry.seq
            out.findings.append(Finding(
                "journal", f"journal entry {entry.seq}", f"cannot be replayed ({reason}); mount refuses the image",
                fix=f"replay up to entry {entry.seq - 1} and drop it and the {rest} entries after it",
                action=lambda rep, seq=entry.seq: rep.plan_replay_until(seq)))
            return
        for tree, key, value in keys:
            tree_keys = out.raw[tree]
            if value is None:
                tree_keys.pop(key, None)
            else:
                tree_keys[key] = value
        out.replayed += 1


def _unreplayable(update: tuple[int, bytes, bytes | None], max_entry: int) -> str | None:
    """Why `Engine.apply_keys` would fail on this key update, or None."""
    tree, key, value = update
    if tree == Tree.LOGGED_OPS:
        return None
    if tree not in NODE_TREES:
        return f"it names unknown btree {tree}"
    if value is not None and len(key) + len(value) + LEAF_ENTRY_OVERHEAD > max_entry:
        return f"a {TREE_NAMES[tree]} entry of {len(key) + len(value)} bytes does not fit a node"
    if tree == Tree.ALLOC:
        try:
            decoded = decode_key(key)
            if len(decoded) != 1 or not isinstance(decoded[0], int):
                return f"alloc key {decoded!r} is not a bucket number"
            if value is not None:
                AllocInfo.decode(value)
        except FormatError as exc:
            return f"bad alloc entry: {exc}"
    return None


def check_roots(img: ImageRead) -> list[str]:
    """The quick check of a clean image: can every root node be read?"""
    store = NodeStore(img.device, img.sb.node_size, img.seed, cache_nodes=16)
    bad = []
    roots = img.checkpoint.roots or {}
    for tree in NODE_TREES:
        root = roots.get(int(tree))
        if root is None:
            bad.append(f"the checkpoint names no root for the {TREE_NAMES[tree]} btree")
            continue
        try:
            store.load(Ptr(root.addr, root.csum), tree, root.level)
        except (FormatError, OSError) as exc:
            bad.append(f"{TREE_NAMES[tree]} root: {exc}")
    return bad

"""The storage engine layer: keys in btrees, committed as journal entries, on a checksummed image.

Knows nothing of POSIX or FUSE: keys and values are bytes in numbered
btrees; the on-disk records come from `pyfs.format`.  The layers above use
`engine.Engine` and the `Transaction`s it hands out (plus the devices, and
`check` for fsck).  One concern per module, bottom first:

- `device`: the `Device` protocol and `FileDevice`, the image file under a
  lock (invariants 4, 8).
- `fault_device`: `FaultDevice`, an in-memory disk with a volatile cache
  that fails writes and flushes or cuts power, and the crash images a power
  loss could leave (the test base of invariants 1, 4, 6, 7).
- `recorder`: `RecordingDevice`, a log of every write and flush of a real
  mount, for power-loss replay by tools/crashloop.py (invariant 4).
- `superblock_io`: the two superblock copies (invariants 5, 9).
- `node_store`: btree nodes in memory, read through a checksum-verifying
  LRU cache; dirty and replaced nodes tracked (invariants 3, 5).
- `btree`: the copy-on-write B+tree over the node store (invariant 3).
- `alloc`: `BucketSpace`, the in-memory mirror of the alloc btree; who may
  have which bucket, and when freed space is reusable (invariant 3).
- `key_state`: the committed btrees, logged-op keys and bucket mirror, and
  `apply_keys`, the one path commit and replay share (invariants 2, 3, 7).
- `transaction`: the read-your-writes overlay committed as one entry
  (invariant 1).
- `journal_writer`: appending entries and writing them durably, in seq
  order and sector aligned (invariants 1, 3, 4).
- `journal_scan`: choosing the replay chain at open; torn tail or
  corruption (invariants 1, 2, 5).
- `replay`: filling the key state from the checkpoint and the chain, and
  fsck's repair hooks (invariants 1, 2).
- `durability`: flushes, group commit, the commit timer, and turning
  read-only on a failed write or flush (invariants 4, 6).
- `checkpoint`: dirty nodes to fresh space, then the entry naming the new
  roots and the live logged ops (invariants 3, 4, 7).
- `data_regions`: allocating, writing and verifying file data regions
  (invariants 3, 4, 5).
- `engine`: `Engine`, the facade that opens or formats an image, commits,
  triggers checkpoints and composes the modules above.
- `check`: the structural checker of an image (invariants 3, 5, 9).

Each module imports only modules listed before it, so there is no cycle
(tests/test_layers.py checks that); this file imports nothing.
"""

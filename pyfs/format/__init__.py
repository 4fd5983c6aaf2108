"""On-disk layouts: every byte pyfs writes is described by a module of this package.

Nothing outside `pyfs.format` knows how a superblock, a journal entry, a btree
node or a key is laid out; the layers above only call these encoders and
decoders.  Every record carries an xxh3_64 checksum (DESIGN.md invariant 5).
"""

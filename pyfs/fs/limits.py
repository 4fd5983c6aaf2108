"""The limits every filesystem operation enforces, with the errno ext4 gives past them."""

from __future__ import annotations

MAX_FILE_SIZE = 1 << 46   # EFBIG beyond (ext4 with 4 KiB blocks: 16 TiB)
LINK_MAX = 65000          # EMLINK: hard links of a file, subdirectories of a directory
SYMLINK_MAX = 4095        # ENAMETOOLONG: bytes of a symlink target

"""Reading and writing the two superblock copies.

Promises (DESIGN.md invariants 5 and 9): the primary copy at block 0 is used
when valid; a damaged primary falls back to the backup in the last block and
says so; an image that is not pyfs, of an unknown version, or shorter than
its superblock claims gets a clear `FormatError`
(tests/test_engine.py).
"""

from __future__ import annotations

import logging

from .device import Device
from ..format.errors import FormatError, NotPyfs, UnsupportedVersion
from ..format.superblock import BLOCK_SIZE, Superblock

log = logging.getLogger(__name__)


def write_superblocks(device: Device, sb: Superblock) -> None:
    raw = sb.encode()
    device.pwrite(0, raw)
    device.pwrite(sb.backup_offset, raw)


def read_superblock(device: Device) -> tuple[Superblock, list[str]]:
    """The superblock and notes about anything odd (e.g. a damaged primary)."""
    notes: list[str] = []
    if device.size < 2 * BLOCK_SIZE:
        raise NotPyfs(f"not a pyfs image: only {device.size} bytes")
    try:
        primary_error: FormatError | None = None
        sb = Superblock.decode(device.pread(0, BLOCK_SIZE))
    except UnsupportedVersion:
        raise
    except FormatError as exc:
        primary_error = exc
    except OSError as exc:
        primary_error = FormatError(f"cannot read the primary superblock: {exc}")
    if primary_error is not None:
        backup_at = device.size - device.size % BLOCK_SIZE - BLOCK_SIZE
        try:
            sb = Superblock.decode(device.pread(backup_at, BLOCK_SIZE))
        except UnsupportedVersion:
            raise
        except (FormatError, OSError):
            if isinstance(primary_error, NotPyfs):
                raise NotPyfs("not a pyfs image (no valid superblock at the start or end)") from None
            raise FormatError(f"primary superblock unusable ({primary_error}) and no valid backup") from None
        note = f"primary superblock unusable ({primary_error}); using the backup copy"
        log.warning(note)
        notes.append(note)
    if device.size < sb.size:
        raise FormatError(f"image is truncated: {device.size} bytes, but the superblock says {sb.size}")
    return sb, notes

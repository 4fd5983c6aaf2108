"""mkfs.pyfs: make a new, empty pyfs filesystem on an image file or block device.

Promises (DESIGN.md invariants 8 and 9):
- The target is opened through `FileDevice.open`, whose exclusive lock makes
  a mounted (or being-repaired) image refuse with a clear `DeviceBusy`.
- Without `--force` nothing that may be somebody's data is overwritten: a
  target holding a pyfs superblock, or any non-zero byte found by the check
  in `find_nonzero`, is refused.  `--force` is also needed to change the
  size of an existing non-empty file; block devices are never resized.
- The new image holds both superblocks, empty btrees plus one transaction
  with the root directory inode and the inode counter, and ends with a clean
  checkpoint, so the first mount replays nothing.
- User errors (bad arguments, refused targets, too small, I/O errors) print
  one line `mkfs.pyfs: <message>` on stderr, never a traceback.
  Exit codes: 0 success, 1 operational error, 2 usage error.

Proven by tests/test_mkfs.py.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import re
import stat
import sys
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass

from ..engine.device import FileDevice
from ..engine.engine import Engine
from ..format.errors import FormatError, UnsupportedVersion
from ..fs import format_filesystem
from ..format.superblock import BLOCK_SIZE, DEFAULT_BUCKET_SIZE, DEFAULT_NODE_SIZE, MAX_LABEL_BYTES, Superblock, plan_geometry
from ..engine.superblock_io import read_superblock

PROG = "mkfs.pyfs"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_UNITS = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
_SIZE_RE = re.compile(r"(\d+)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)


class Refused(Exception):
    """The target may hold somebody's data, or cannot take the asked format."""


# ---------------------------------------------------------------------------
# sizes
# ---------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes in `text`: plain digits or digits with K, M, G or T (powers of 1024).

    Case-insensitive, with an optional trailing B or iB (`512M`, `4g`,
    `1GiB`, `4096B`).  ValueError for anything else.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r} (expected e.g. 4096, 512M, 4G, 1GiB)")
    number, unit = match.groups()
    return int(number) << _UNITS[(unit or "").lower()]


def _size_arg(text: str) -> int:
    """argparse type: a positive size; errors become usage errors (exit 2)."""
    try:
        value = parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, not {text!r}")
    return value


def _label_arg(text: str) -> str:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("label must be valid UTF-8") from None
    if len(raw) > MAX_LABEL_BYTES:
        raise argparse.ArgumentTypeError(f"label is {len(raw)} bytes long; the limit is {MAX_LABEL_BYTES}")
    return text


def human_size(n: int) -> str:
    """`n` bytes in the largest binary unit that keeps the number >= 1: '1.5 GiB'."""
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            value = n / (1 << shift)
            text = f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
    return f"{n} bytes"


def _bytes_and_human(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{n} bytes ({human_size(n)})"


# ---------------------------------------------------------------------------
# is there anything on the target worth keeping?
# ---------------------------------------------------------------------------

_CHUNK = 1 << 20
_ZEROS = bytes(_CHUNK)
# Reading every data extent is exact; past this many bytes of data it would
# make mkfs of a big preallocated (fallocate'd or dd'd) file take minutes, so
# the sampled check below is used instead.
_FULL_READ_LIMIT = 256 << 20
_SAMPLES = 256
_SAMPLE_LEN = 64 << 10
# Where other filesystems and partition tables keep their signatures or
# backup copies beyond the first MiB (btrfs mirrors at 64 MiB and 256 GiB).
_KNOWN_SIGNATURES = (64 << 20, 256 << 30)


def _first_nonzero_in(fd: int, start: int, end: int) -> int | None:
    """Offset of the first non-zero byte in [start, end) of `fd`, or None."""
    pos = start
    while pos < end:
        want = min(_CHUNK, end - pos)
        chunk = os.pread(fd, want, pos)
        if not chunk:  # the file is shorter than it claimed: nothing more to see
            return None
        if chunk != _ZEROS[: len(chunk)]:
            return pos + next(i for i, b in enumerate(chunk) if b)
        pos += len(chunk)
    return None


def _data_extents(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The [start, end) ranges of `fd` that hold data, or None if the system cannot say.

    Holes of a sparse file read as zeros, so only these ranges need reading:
    a 1 TiB sparse file is checked in a few reads.
    """
    seek_data = getattr(os, "SEEK_DATA", None)
    seek_hole = getattr(os, "SEEK_HOLE", None)
    if seek_data is None or seek_hole is None:
        return None
    extents = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, seek_data)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data at or after pos
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
                return None
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, seek_hole), size)
        extents.append((start, end))
        pos = end
    return extents


def _sample_ranges(size: int) -> list[tuple[int, int]]:
    """The first and last MiB, known signature places, and evenly spread samples."""
    ranges = [(0, min(size, _CHUNK)), (max(0, size - _CHUNK), size)]
    ranges += [(at, min(size, at + _SAMPLE_LEN)) for at in _KNOWN_SIGNATURES if at < size]
    step = size // (_SAMPLES + 1)
    if step > _SAMPLE_LEN:
        ranges += [(i * step, i * step + _SAMPLE_LEN) for i in range(1, _SAMPLES + 1)]
    return sorted(ranges)


@dataclass(frozen=True)
class ZeroCheck:
    first_nonzero: int | None
    how: str  # what was read, for messages


def find_nonzero(fd: int, size: int, *, is_block: bool) -> ZeroCheck:
    """Look for any non-zero byte in the first `size` bytes of `fd`.

    Regular files: `SEEK_DATA`/`SEEK_HOLE` list the data extents (holes read
    as zeros), and all of them are read: the answer is exact.  Block devices
    and filesystems without `SEEK_DATA` report everything as data, and a file
    with more than `_FULL_READ_LIMIT` bytes of data would take too long to
    read whole; for those the first and last MiB, the places where other
    filesystems keep signatures or backup superblocks, and `_SAMPLES` evenly
    spread 64 KiB blocks are read.  That finds any filesystem or partition
    table, but not necessarily an isolated non-zero block in the middle.
    """
    extents = None if is_block else _data_extents(fd, size)
    if extents is not None and sum(end - start for start, end in extents) <= _FULL_READ_LIMIT:
        how = "all data extents"
        ranges = extents
    else:
        how = "first and last MiB and sampled blocks"
        ranges = _sample_ranges(size)
        if extents is not None:  # skip samples that fall in holes
            ranges = [
                (max(s, es), min(e, ee)) for s, e in ranges for es, ee in extents if s < ee and es < e
            ]
    for start, end in ranges:
        found = _first_nonzero_in(fd, start, end)
        if found is not None:
            return ZeroCheck(found, how)
    return ZeroCheck(None, how)


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a library logger while probing: what it would warn about is reported by us."""
    logger = logging.getLogger(logger_name)
    old = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = old


def check_target_is_empty(device: FileDevice, *, is_block: bool) -> None:
    """Refused unless the target holds neither a pyfs superblock nor any non-zero byte."""
    path = device.path
    try:
        with _quiet("pyfs.engine.superblock_io"):
            old, notes = read_superblock(device)
    except UnsupportedVersion as exc:
        raise Refused(f"{path} already holds a pyfs image ({exc}); use --force to overwrite it") from None
    except (FormatError, OSError):
        pass  # not a (usable) pyfs image: look at the raw bytes below
    else:
        label = f"label {old.label!r}" if old.label else "no label"
        damaged = ", primary superblock damaged" if notes else ""
        raise Refused(
            f"{path} already holds a pyfs image ({label}, uuid {uuidlib.UUID(bytes=old.uuid)}{damaged}); "
            "use --force to overwrite it"
        )
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        check = find_nonzero(fd, device.size, is_block=is_block)
    finally:
        os.close(fd)
    if check.first_nonzero is not None:
        raise Refused(
            f"{path} holds data (non-zero byte at offset {check.first_nonzero}); "
            "use --force to overwrite it"
        )


# ---------------------------------------------------------------------------
# making the filesystem
# ---------------------------------------------------------------------------


def plan(size: int, args: argparse.Namespace) -> Superblock:
    """The geometry for `size` bytes; ValueError (with the reason) if impossible."""
    if args.node_size % BLOCK_SIZE:
        # plan_geometry leaves this to Superblock.validate, whose message
        # does not say what is wrong.
        raise ValueError(f"node size must be a multiple of the {BLOCK_SIZE}-byte block size")
    return plan_geometry(
        size,
        uuid=uuidlib.uuid4().bytes,
        label=args.label,
        bucket_size=args.bucket_size,
        journal_size=args.journal_size,
        node_size=args.node_size,
        created_ns=time.time_ns(),
    )


def write_filesystem(device: FileDevice, sb: Superblock) -> None:
    """Format `device` and add the root directory; closes the device (final clean checkpoint)."""
    eng = Engine.format(device, sb)
    try:
        format_filesystem(eng, uid=os.getuid(), gid=os.getgid())
    finally:
        eng.close()


def _create_sparse(path: str, size: int) -> None:
    """Create `path` as a sparse file of `size` bytes; OSError names the path."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        parent = os.path.dirname(os.path.abspath(path))
        if exc.errno == errno.ENOENT and not os.path.isdir(parent):
            raise OSError(errno.ENOENT, f"cannot create {path}: directory {parent} does not exist") from None
        raise OSError(exc.errno, f"cannot create {path}: {exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        raise OSError(exc.errno, f"cannot make {path} {size} bytes long: {exc.strerror}") from None
    os.close(fd)


def _resize(path: str, size: int) -> None:
    # A second descriptor: the device's own one is private to FileDevice, and
    # the flock it holds keeps other pyfs users away meanwhile.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _sync_parent(path: str) -> None:
    """Make the directory entry of a newly created image durable too."""
    parent = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the image itself is synced
    finally:
        os.close(fd)


def _open_device(path: str) -> FileDevice:
    try:
        return FileDevice.open(path)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise  # DeviceBusy: its message already says what to do
        raise OSError(exc.errno, f"cannot open {path}: {exc.strerror or exc}") from None


def make_filesystem(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Superblock:
    """Run mkfs as asked; returns the new superblock.  Refused/OSError/ValueError on failure."""
    path = args.image
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot access {path}: {exc.strerror}") from None

    if st is None:
        if args.size is None:
            parser.error(f"{path} does not exist; give --size to create it")
        sb = plan(args.size, args)  # before creating anything: a refused size leaves no file
        _create_sparse(path, args.size)
        try:
            device = _open_device(path)
            try:
                write_filesystem(device, sb)
            finally:
                device.close()
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise
        _sync_parent(path)
        return sb

    if stat.S_ISDIR(st.st_mode):
        raise Refused(f"{path} is a directory; give the path of an image file or block device")
    device = _open_device(path)
    try:
        is_block = stat.S_ISBLK(st.st_mode)
        size = device.size
        resize_to = None
        if args.size is not None and args.size != size:
            if is_block:
                raise Refused(
                    f"{path} is a block device of {_bytes_and_human(size)}; "
                    "--size cannot change it (leave --size out)"
                )
            if size != 0 and not args.force:
                raise Refused(
                    f"{path} is {_bytes_and_human(size)}, not the {_bytes_and_human(args.size)} "
                    "asked; use --force to resize it"
                )
            resize_to = args.size
        if not args.force:
            check_target_is_empty(device, is_block=is_block)
        if size == 0 and resize_to is None:
            raise Refused(f"{path} is empty; give --size to make it an image")
        sb = plan(resize_to if resize_to is not None else size, args)
        if resize_to is not None:
            _resize(path, resize_to)
            # `size` is the Device protocol's public bound for every read and
            # write; the lock is still held, so nobody else saw the old size.
            device.size = resize_to
        write_filesystem(device, sb)
    finally:
        device.close()
    return sb


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Make a new, empty pyfs filesystem on an image file or block device.",
        epilog="Sizes are bytes or take a K, M, G or T suffix (powers of 1024): 512M, 4G, 1GiB.",
    )
    parser.add_argument("image", metavar="IMAGE", help="image file (created if absent) or block device")
    parser.add_argument("--size", type=_size_arg, metavar="SIZE", help="image size; required when IMAGE does not exist")
    parser.add_argument("--label", type=_label_arg, metavar="LABEL", default="", help=f"filesystem label (up to {MAX_LABEL_BYTES} bytes)")
    parser.add_argument(
        "--journal-size", type=_size_arg, metavar="SIZE", default=None,
        help="journal size (default: 1/32 of the image, between 256 KiB and 64 MiB)",
    )
    parser.add_argument(
        "--bucket-size", type=_size_arg, metavar="SIZE", default=DEFAULT_BUCKET_SIZE,
        help=f"bucket size, a power of two (default {human_size(DEFAULT_BUCKET_SIZE)})",
    )
    parser.add_argument(
        "--node-size", type=_size_arg, metavar="SIZE", default=DEFAULT_NODE_SIZE,
        help=f"btree node size (default {human_size(DEFAULT_NODE_SIZE)})",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing filesystem or data, resize a file")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def summary(path: str, sb: Superblock) -> str:
    rows = [
        ("image", path),
        ("size", _bytes_and_human(sb.size)),
        ("block size", f"{sb.block_size} bytes"),
        ("buckets", f"{sb.nbuckets} of {_bytes_and_human(sb.bucket_size)}"),
        ("node size", _bytes_and_human(sb.node_size)),
        ("journal", f"{_bytes_and_human(sb.journal_size)} at byte {sb.journal_offset}"),
        ("uuid", str(uuidlib.UUID(bytes=sb.uuid))),
        ("label", repr(sb.label) if sb.label else "(none)"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{PROG}: made a pyfs filesystem"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _message(exc: BaseException) -> str:
    """One line for the user: the errno text and the path when the error carries them."""
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        name = exc.filename
        if name is not None and os.fsdecode(name) not in text:
            text = f"{os.fsdecode(name)}: {text}"
    else:
        text = str(exc)
    return " ".join(text.split())  # one line, whatever the message held


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sb = make_filesystem(args, parser)
    except (Refused, OSError, ValueError) as exc:  # FormatError is an OSError
        print(f"{PROG}: {_message(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if not args.quiet:
        print(summary(args.image, sb))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

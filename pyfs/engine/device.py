"""Byte-addressed I/O on the image, and a fault-injecting twin for tests.

This is the lowest layer; it imports nothing from pyfs. Every device keeps
these promises, and the layers above rely on nothing more:

- ``pread(offset, length)`` returns exactly ``length`` bytes or raises
  ``OSError`` (``EIO`` when the bytes are not there, e.g. past the end of a
  truncated image). Never short data.
- ``pwrite(offset, data)`` writes the whole buffer or raises: ``EROFS`` on a
  read-only device, ``EIO`` past the end, ``EINVAL`` for a negative offset.
  A write is *not* durable until a later ``flush`` returns.
- ``flush()`` returning means every write issued before it is durable.
  Once a flush has failed, every later flush of that ``FileDevice`` fails with
  ``EIO`` too: a device never reports durability it does not have
  (DESIGN.md invariant 4; see ``FileDevice.flush`` for why retrying lies).
- ``FileDevice.open`` takes a ``flock`` on the image for the device's lifetime,
  exclusive for read-write and shared for read-only, so a second writer (a
  second mount, a repairing fsck) is refused with ``DeviceBusy``
  (invariant 8).

``FaultDevice`` is an in-memory device that models a disk with a volatile
write cache: it records every write and flush, can fail a chosen write or
flush, can cut power, and computes what the disk could hold after a crash at
any point (dropped, kept, partly kept or torn unflushed writes). The crash
tests of the layers above are built on it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "SECTOR",
    "MODES",
    "DeviceError",
    "DeviceBusy",
    "Device",
    "FileDevice",
    "PowerCut",
    "DeviceOp",
    "FaultDevice",
]

SECTOR = 512
"""The unit a disk writes atomically: a torn write lands in whole sectors."""


class DeviceError(OSError):
    """An I/O failure of the device, carrying its errno (``EIO``, ``EROFS``...)."""


class DeviceBusy(DeviceError):
    """The image is locked by another user: mounted, or being repaired."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        name = os.fsdecode(path)
        super().__init__(
            errno.EBUSY,
            f"{name} is in use (mounted, or being repaired by fsck); "
            "unmount it or wait for fsck to finish",
            name,
        )


@runtime_checkable
class Device(Protocol):
    """What the layers above may ask of an image."""

    size: int
    read_only: bool

    def pread(self, offset: int, length: int) -> bytes: ...

    def pwrite(self, offset: int, data: bytes) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def _check_range(offset: int, length: int, size: int, what: str) -> None:
    """Refuse ranges outside ``[0, size)``: negative is a bug, past the end is EIO."""
    if offset < 0 or length < 0:
        raise DeviceError(errno.EINVAL, f"{what}: negative offset {offset} or length {length}")
    if offset + length > size:
        raise DeviceError(
            errno.EIO,
            f"{what}: bytes {offset}..{offset + length} lie past the end of the "
            f"device ({size} bytes)",
        )


# ---------------------------------------------------------------------------
# FileDevice
# ---------------------------------------------------------------------------


class FileDevice:
    """An image file or block device. Create it with :meth:`FileDevice.open`."""

    def __init__(self, fd: int, path: str, size: int, read_only: bool) -> None:
        self._fd = fd
        self.path = path
        self.size = size
        self.read_only = read_only
        self.write_count = 0
        self.flush_count = 0
        self._flush_error: BaseException | None = None

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        lock: bool = True,
    ) -> FileDevice:
        """Open ``path`` and lock it: exclusively, or shared when ``read_only``.

        Raises ``DeviceBusy`` when another open file description holds a
        conflicting lock (in this process or another), ``OSError`` from the
        system (``ENOENT``, ``EACCES``...), and ``DeviceError(EINVAL)`` for
        something that is neither a regular file nor a block device.
        """
        name = os.fsdecode(path)
        st = os.stat(name)
        is_block = stat.S_ISBLK(st.st_mode)
        if not is_block and not stat.S_ISREG(st.st_mode):
            raise DeviceError(errno.EINVAL, "not a regular file or block device", name)

        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        if is_block and not read_only:
            # Linux refuses O_EXCL on a block device that a kernel filesystem
            # has mounted or another O_EXCL user holds: the flock below only
            # coordinates with programs that also take it.
            flags |= os.O_EXCL
        try:
            fd = os.open(name, flags)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise DeviceBusy(name) from exc
            raise

        try:
            if lock:
                how = fcntl.LOCK_SH if read_only else fcntl.LOCK_EX
                try:
                    fcntl.flock(fd, how | fcntl.LOCK_NB)
                except BlockingIOError as exc:
                    raise DeviceBusy(name) from exc
            fst = os.fstat(fd)
            if stat.S_ISBLK(fst.st_mode):
                size = os.lseek(fd, 0, os.SEEK_END)
            else:
                size = fst.st_size
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, name, size, read_only)

    def _require_open(self) -> int:
        if self._fd < 0:
            raise DeviceError(errno.EBADF, "device is closed", self.path)
        return self._fd

    def pread(self, offset: int, length: int) -> bytes:
        fd = self._require_open()
        _check_range(offset, length, self.size, f"read of {self.path}")
        chunks: list[bytes] = []
        done = 0
        while done < length:
            chunk = os.pread(fd, length - done, offset + done)
            if not chunk:
                # The file shrank under us (or was shorter than its size
                # claimed): the bytes asked for do not exist.
                raise DeviceError(
                    errno.EIO,
                    f"short read at byte {offset + done}: image is truncated",
                    self.path,
                )
            chunks.append(chunk)
            done += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def pwrite(self, offset: int, data: bytes) -> None:
        fd = self._require_open()
        if self.read_only:
            raise DeviceError(errno.EROFS, "device is read-only", self.path)
        view = memoryview(data).cast("B")
        _check_range(offset, len(view), self.size, f"write to {self.path}")
        done = 0
        while done < len(view):
            n = os.pwrite(fd, view[done:], offset + done)
            if n <= 0:
                raise DeviceError(errno.EIO, f"write at byte {offset + done} made no progress", self.path)
            done += n
        self.write_count += 1

    def flush(self) -> None:
        """Make every earlier write durable, or raise ``EIO`` forever after.

        Linux reports a writeback error to ``fsync`` once and then marks the
        failed pages clean, so a second ``fsync`` returns success although
        the data never reached the disk. Retrying a failed flush therefore
        lies. This device remembers the first failure and fails every later
        flush with ``EIO``; the layers above must turn read-only instead.
        """
        fd = self._require_open()
        if self._flush_error is not None:
            raise DeviceError(
                errno.EIO,
                "an earlier flush failed; durability can no longer be promised",
                self.path,
            ) from self._flush_error
        if self.read_only:
            return
        try:
            os.fdatasync(fd)
        except OSError as exc:
            self._flush_error = exc
            raise DeviceError(errno.EIO, f"flush failed: {exc.strerror or exc}", self.path) from exc
        self.flush_count += 1

    def close(self) -> None:
        """Close the image and release its lock. Closing twice is harmless."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)  # releases the flock with the open file description

    def __enter__(self) -> FileDevice:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        state = "closed" if self._fd < 0 else mode
        return f"<FileDevice {self.path!r} {self.size} bytes {state}>"


# ---------------------------------------------------------------------------
# FaultDevice
# ---------------------------------------------------------------------------


class PowerCut(Exception):
    """Simulated power loss: the device (and the process using it) is dead."""


@dataclass(frozen=True)
class DeviceOp:
    """One write or flush that a FaultDevice accepted, in issue order."""

    kind: Literal["write", "flush"]
    offset: int = 0
    data: bytes = b""


MODES = ("drop_all", "keep_all", "keep_some", "tear_last")
"""How the unflushed writes of a crash image are treated; see ``crash_image``."""

# A crash plan: which unflushed writes land, as (index into the pending
# writes, number of leading bytes that land), in issue order.
_Plan = tuple[tuple[int, int], ...]


def _torn_length(write: DeviceOp, rng: random.Random) -> int:
    """Bytes of ``write`` that land when it is torn: a strict prefix ending
    on a device sector boundary (the first one may be partial), possibly empty."""
    end = write.offset + len(write.data)
    first_boundary = (write.offset // SECTOR + 1) * SECTOR
    cuts = [write.offset, *range(first_boundary, end, SECTOR)]
    return rng.choice(cuts) - write.offset


def _plan(pending: list[DeviceOp], mode: str, rng: random.Random) -> _Plan:
    if mode == "drop_all":
        return ()
    if mode == "keep_all":
        return tuple((i, len(w.data)) for i, w in enumerate(pending))
    if mode == "keep_some":
        return tuple((i, len(w.data)) for i, w in enumerate(pending) if rng.random() < 0.5)
    if mode == "tear_last":
        if not pending:
            return ()
        *whole, last = pending
        plan = [(i, len(w.data)) for i, w in enumerate(whole)]
        torn = _torn_length(last, rng)
        if torn:
            plan.append((len(whole), torn))
        return tuple(plan)
    raise ValueError(f"unknown crash mode {mode!r}; expected one of {MODES}")


def _apply(image: bytearray, pending: list[DeviceOp], plan: _Plan) -> bytearray:
    for index, length in plan:
        write = pending[index]
        image[write.offset : write.offset + length] = write.data[:length]
    return image


class FaultDevice:
    """In-memory device for tests: records every write and flush; can fail or cut power.

    ``image`` is the initial durable content; its length is ``size``. Reads
    see the volatile view: the initial image plus every accepted write, in
    order. ``ops`` lists every accepted write and flush; a write or flush
    that failed (injected EIO, power cut) is not in it.

    - ``fail_write_at=N``: the write with 0-based index N among write calls
      raises ``EIO`` and is not applied; later writes work.
    - ``fail_flush_at=N``: the Nth flush call raises ``EIO``; writes issued
      before it stay unflushed until a later flush succeeds. Unlike
      ``FileDevice`` this is not sticky: the engine must stop on its own.
    - ``cut_power_at=N``: when op number N (its index in ``ops``) is about
      to run, raise ``PowerCut``; from then on pread, pwrite, flush and close
      raise ``PowerCut``. The inspection methods keep working.
    """

    def __init__(
        self,
        image: bytes | bytearray,
        *,
        fail_write_at: int | None = None,
        fail_flush_at: int | None = None,
        cut_power_at: int | None = None,
        read_only: bool = False,
    ) -> None:
        self.size = len(image)
        self.read_only = read_only
        self.ops: list[DeviceOp] = []
        self.write_count = 0
        self.flush_count = 0
        self.fail_write_at = fail_write_at
        self.fail_flush_at = fail_flush_at
        self.cut_power_at = cut_power_at
        self._initial = bytes(image)
        self._volatile = bytearray(image)
        self._durable = bytearray(image)
        self._unflushed: list[DeviceOp] = []
        self._write_calls = 0
        self._flush_calls = 0
        self._powered = True
        self._closed = False

    # -- the Device protocol -------------------------------------------------

    def _require_alive(self) -> None:
        if not self._powered:
            raise PowerCut("the power is off")
        if self._closed:
            raise DeviceError(errno.EBADF, "device is closed")

    def _maybe_cut_power(self) -> None:
        if self.cut_power_at is not None and len(self.ops) >= self.cut_power_at:
            self._powered = False
            raise PowerCut(f"power cut before op {len(self.ops)}")

    def pread(self, offset: int, length: int) -> bytes:
        self._require_alive()
        _check_range(offset, length, self.size, "read")
        return bytes(self._volatile[offset : offset + length])

    def pwrite(self, offset: int, data: bytes) -> None:
        self._require_alive()
        if self.read_only:
            raise DeviceError(errno.EROFS, "device is read-only")
        payload = bytes(data)  # the caller may reuse its buffer
        _check_range(offset, len(payload), self.size, "write")
        self._maybe_cut_power()
        index = self._write_calls
        self._write_calls += 1
        if index == self.fail_write_at:
            raise DeviceError(errno.EIO, f"injected failure of write {index} at byte {offset}")
        op = DeviceOp("write", offset, payload)
        self.ops.append(op)
        self._unflushed.append(op)
        self._volatile[offset : offset + len(payload)] = payload
        self.write_count += 1

    def flush(self) -> None:
        self._require_alive()
        if self.read_only:
            return
        self._maybe_cut_power()
        index = self._flush_calls
        self._flush_calls += 1
        if index == self.fail_flush_at:
            raise DeviceError(errno.EIO, f"injected failure of flush {index}")
        self.ops.append(DeviceOp("flush"))
        for write in self._unflushed:
            self._durable[write.offset : write.offset + len(write.data)] = write.data
        self._unflushed.clear()
        self.flush_count += 1

    def close(self) -> None:
        if not self._powered:
            raise PowerCut("the power is off")
        self._closed = True

    # -- inspection ----------------------------------------------------------

    @property
    def powered(self) -> bool:
        """False once ``cut_power_at`` has been reached."""
        return self._powered

    def durable_image(self) -> bytearray:
        """What the disk holds if power fails now and every unflushed write is lost."""
        return bytearray(self._durable)

    def crash_image(self, op_count: int, mode: str, rng: random.Random) -> bytearray:
        """The disk content if power had failed after the first ``op_count`` ops.

        Writes before the last flush among those ops are durable. The
        unflushed writes after it are treated by ``mode``:

        - ``drop_all``: none survive;
        - ``keep_all``: all survive, in issue order;
        - ``keep_some``: a random subset survives, applied in issue order;
        - ``tear_last``: all survive except the last, of which only a random
          strict prefix of whole sectors lands (possibly nothing); with no
          unflushed writes this is ``drop_all``.
        """
        if not 0 <= op_count <= len(self.ops):
            raise ValueError(f"op_count {op_count} outside 0..{len(self.ops)}")
        if mode not in MODES:
            raise ValueError(f"unknown crash mode {mode!r}; expected one of {MODES}")
        ops = self.ops[:op_count]
        last_flush = max((i for i, op in enumerate(ops) if op.kind == "flush"), default=-1)
        image = bytearray(self._initial)
        flushed = [op for op in ops[: last_flush + 1] if op.kind == "write"]
        _apply(image, flushed, tuple((i, len(w.data)) for i, w in enumerate(flushed)))
        pending = [op for op in ops[last_flush + 1 :] if op.kind == "write"]
        return _apply(image, pending, _plan(pending, mode, rng))

    def crash_images(
        self,
        modes: Iterable[str],
        rng: random.Random,
        *,
        skip_duplicates: bool = True,
    ) -> Iterator[tuple[int, str, bytearray]]:
        """Yield ``(op_count, mode, image)`` for op_count 0..len(ops) and each mode.

        Same semantics as :meth:`crash_image`, in one pass over ``ops``: the
        durable base is advanced at each flush instead of being replayed per
        point. Each image is a fresh bytearray the caller may keep. With
        ``skip_duplicates``, a mode whose chosen writes are exactly those of
        a mode already yielded for the same op_count is skipped (so right
        after a flush only the first mode is yielded).
        """
        modes = tuple(modes)
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"unknown crash mode {mode!r}; expected one of {MODES}")
        base = bytearray(self._initial)
        pending: list[DeviceOp] = []
        for op_count in range(len(self.ops) + 1):
            if op_count:
                op = self.ops[op_count - 1]
                if op.kind == "flush":
                    for write in pending:
                        base[write.offset : write.offset + len(write.data)] = write.data
                    pending = []
                else:
                    pending.append(op)
            seen: set[_Plan] = set()
            for mode in modes:
                plan = _plan(pending, mode, rng)
                if skip_duplicates:
                    if plan in seen:
                        continue
                    seen.add(plan)
                yield op_count, mode, _apply(bytearray(base), pending, plan)

    def __repr__(self) -> str:
        state = "dead" if not self._powered else ("closed" if self._closed else "live")
        return f"<FaultDevice {self.size} bytes, {len(self.ops)} ops, {state}>"

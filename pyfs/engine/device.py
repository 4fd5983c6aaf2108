"""Byte-addressed I/O on the image: the `Device` protocol and the real `FileDevice`.

The bottom of the engine layer; it imports nothing from pyfs. Every device
keeps these promises, and the layers above rely on nothing more:

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

The fault-injecting twin used by the crash tests lives in `fault_device.py`;
the recording wrapper of real mounts in `recorder.py`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import Protocol, runtime_checkable

__all__ = [
    "SECTOR",
    "DeviceError",
    "DeviceBusy",
    "Device",
    "FileDevice",
    "check_range",
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


def check_range(offset: int, length: int, size: int, what: str) -> None:
    """Refuse ranges outside ``[0, size)``: negative is a bug, past the end is EIO."""
    if offset < 0 or length < 0:
        raise DeviceError(errno.EINVAL, f"{what}: negative offset {offset} or length {length}")
    if offset + length > size:
        raise DeviceError(
            errno.EIO,
            f"{what}: bytes {offset}..{offset + length} lie past the end of the "
            f"device ({size} bytes)",
        )


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
        check_range(offset, length, self.size, f"read of {self.path}")
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
        check_range(offset, len(view), self.size, f"write to {self.path}")
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

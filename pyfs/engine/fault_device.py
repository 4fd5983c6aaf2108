"""A fault-injecting in-memory device, and what the disk could hold after a crash.

`FaultDevice` keeps the `Device` promises of `device.py` and models a disk
with a volatile write cache: it records every write and flush it accepts
(`ops`), can fail a chosen write or flush with EIO, can cut power
(`PowerCut`), and computes the crash images a power loss after any op could
leave behind: unflushed writes dropped, kept, partly kept, or the last one
torn on a sector boundary (`crash_image`, `crash_images`, `MODES`).  The
crash tests of every layer above (DESIGN.md invariants 1, 4, 6 and 7) are
built on it; it is a test device and is never used on a real image.

Promise: a crash image holds every write issued before the last flush among
the ops it covers, and of the writes after it only what its mode lets land,
in issue order, a torn write landing as a strict prefix that ends on a
sector boundary (tests/test_device.py).
"""

from __future__ import annotations

import errno
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from .device import SECTOR, DeviceError, check_range

__all__ = ["MODES", "PowerCut", "DeviceOp", "FaultDevice"]


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
        check_range(offset, length, self.size, "read")
        return bytes(self._volatile[offset : offset + length])

    def pwrite(self, offset: int, data: bytes) -> None:
        self._require_alive()
        if self.read_only:
            raise DeviceError(errno.EROFS, "device is read-only")
        payload = bytes(data)  # the caller may reuse its buffer
        check_range(offset, len(payload), self.size, "write")
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

"""The FUSE adapter runs long operations step by step (the promises of pyfs/mount/longop_runner.py and control_channel.py).

Driven in process, without a kernel: the handlers are plain trio functions.
The kernel-notification calls are replaced by recorders, since there is no
FUSE session here.  What is proven:
- while a collapse runs, requests on other inodes are answered between its
  steps, and requests on the file being collapsed wait and then see the
  finished result;
- the command's start is durable before its first step, and the kernel's
  cache of the file is invalidated before the command returns;
- a deletion started by `release` runs in the background and holds nobody;
- control-file requests with bad input get their errno and change nothing.
"""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pyfuse3
import pytest
import trio

from pyfs.format import control
from pyfs.engine.fault_device import FaultDevice
from pyfs.fs import FileSystem, logged_ops
from pyfs.mount.operations import PyfsOperations
from test_fs_core import fresh_image

ROOT = 1
BLOCK = 4096


def ctx(uid: int = 0, gid: int = 0) -> SimpleNamespace:
    return SimpleNamespace(uid=uid, gid=gid, pid=os.getpid(), umask=0o022)


@pytest.fixture
def kernel(monkeypatch):
    """Record the notifications the adapter sends to the kernel."""
    calls: list[tuple] = []
    monkeypatch.setattr(pyfuse3, "invalidate_inode", lambda ino, attr_only=False: calls.append(("inode", ino)))
    monkeypatch.setattr(pyfuse3, "invalidate_entry",
                        lambda parent, name, deleted=0: calls.append(("entry", parent, name, deleted)))
    monkeypatch.setattr(pyfuse3, "invalidate_entry_async",
                        lambda parent, name, deleted=0, ignore_enoent=False: calls.append(("entry", parent, name)))
    return calls


@pytest.fixture
def small_steps(monkeypatch):
    monkeypatch.setattr(logged_ops, "STEP_EXTENTS", 4)


def _file_with_extents(fs: FileSystem, name: bytes, blocks: int) -> tuple[int, bytes]:
    fh, attr = fs.create(ROOT, name, 0o644)
    content = b"".join(bytes([i % 251 + 1]) * BLOCK for i in range(blocks))
    for i in range(blocks):  # one extent per block
        fs.write(fh, i * BLOCK, content[i * BLOCK:(i + 1) * BLOCK])
    fs.release(fh)
    return attr.ino, content


def _command(**request) -> bytes:
    return control.encode(request)


def test_other_requests_are_served_between_steps_and_the_file_waits(kernel, small_steps):
    fs = FileSystem.mount(FaultDevice(fresh_image(32 << 20)))
    big, content = _file_with_extents(fs, b"big", 64)
    other, _ = _file_with_extents(fs, b"other", 1)
    ops = PyfsOperations(fs)
    seen: dict[str, object] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def collapse() -> None:
                await ops.setxattr(control.CONTROL_INO, control.COMMAND_XATTR,
                                   _command(op="collapse", ino=big, offset=BLOCK, length=8 * BLOCK), ctx())
                seen["kernel_at_return"] = list(kernel)
                done.set()

            nursery.start_soon(collapse)
            await trio.sleep(0)  # the command starts and runs its first steps
            while not fs.long_ops():
                await trio.sleep(0)
            # Mid-way: the op is listed, other inodes answer at once.
            seen["listed"] = [(s.kind, s.ino) for s in fs.long_ops()]
            seen["other_size"] = (await ops.getattr(other)).st_size
            seen["done_before_other"] = done.is_set()
            # The file itself waits for the end of the operation.
            seen["big_size"] = (await ops.getattr(big)).st_size
            seen["done_before_big"] = done.is_set() or not fs.busy

    trio.run(main)
    assert seen["listed"] == [("collapse", big)]
    assert seen["other_size"] == BLOCK
    assert seen["done_before_other"] is False
    assert seen["big_size"] == len(content) - 8 * BLOCK
    assert seen["done_before_big"] is True
    assert ("inode", big) in seen["kernel_at_return"]
    fh = fs.open(big)
    assert fs.read(fh, 0, len(content)) == content[:BLOCK] + content[9 * BLOCK:]
    fs.release(fh)
    assert fs.engine.logged_ops == {}
    fs.close()


def test_the_start_is_durable_before_the_first_step(kernel, small_steps):
    fs = FileSystem.mount(FaultDevice(fresh_image(32 << 20)))
    big, _ = _file_with_extents(fs, b"big", 32)
    ops = PyfsOperations(fs)
    durable_at_first_step: list[bool] = []
    real_step = fs.op_step

    def step(kind: str, ino: int) -> bool:
        if not durable_at_first_step:
            journal = fs.engine.journal
            durable_at_first_step.append(journal.durable_seq >= journal.last_committed_seq)
        return real_step(kind, ino)

    fs.op_step = step  # type: ignore[method-assign]
    trio.run(ops.setxattr, control.CONTROL_INO, control.COMMAND_XATTR,
             _command(op="insert", ino=big, offset=0, length=BLOCK), ctx())
    assert durable_at_first_step == [True]
    assert fs.getattr(big).size == 33 * BLOCK
    fs.close()


def test_deleting_a_big_released_orphan_runs_in_the_background(kernel, small_steps):
    fs = FileSystem.mount(FaultDevice(fresh_image(32 << 20)))
    big, _ = _file_with_extents(fs, b"big", 40)
    ops = PyfsOperations(fs)
    order: list[str] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            ops.start_background(nursery)
            fh = fs.open(big)
            fs.unlink(ROOT, b"big")
            fs.forget(big, fs.lookups.get(big, 0))
            await ops.release(fh)  # the last reference: deletion starts
            order.append("release returned")
            assert big in fs.busy
        order.append("deleted" if fs.getattr(ROOT) and big not in fs.busy else "still busy")

    trio.run(main)
    assert order == ["release returned", "deleted"]
    with pytest.raises(OSError):
        fs.getattr(big)
    assert fs.engine.logged_ops == {}
    fs.close()


@pytest.mark.parametrize("raw, err", [
    (b"not json", errno.EINVAL),
    (_command(op="explode"), errno.EINVAL),
    (_command(op="collapse", ino=2, offset=0), errno.EINVAL),
    (_command(op="collapse", ino=2, offset=1, length=BLOCK), errno.EINVAL),
    (_command(op="collapse", ino=2, offset=0, length=64 * BLOCK), errno.EINVAL),
    (_command(op="insert", ino=2, offset=8 * BLOCK, length=BLOCK), errno.EINVAL),
    (_command(op="punch", ino=99, offset=0, length=1, keep_size=True), errno.ENOENT),
    (_command(op="collapse", ino=ROOT, offset=0, length=BLOCK), errno.EISDIR),
    (_command(op="rmtree", parent=ROOT, name="f"), errno.ENOTDIR),
    (_command(op="rmtree", parent=ROOT, name="nothing"), errno.ENOENT),
    (_command(op="collapse", ino=control.CONTROL_INO, offset=0, length=BLOCK), errno.EPERM),
])
def test_bad_commands_get_their_errno_and_change_nothing(kernel, raw, err):
    fs = FileSystem.mount(FaultDevice(fresh_image()))
    ino, content = _file_with_extents(fs, b"f", 8)
    assert ino == 2
    ops = PyfsOperations(fs)
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops.setxattr, control.CONTROL_INO, control.COMMAND_XATTR, raw, ctx())
    assert info.value.errno == err
    fh = fs.open(ino)
    assert fs.read(fh, 0, 1 << 20) == content
    fs.release(fh)
    fs.close()


def test_an_unprivileged_caller_cannot_collapse_a_file_it_cannot_write(kernel):
    fs = FileSystem.mount(FaultDevice(fresh_image()))
    ino, content = _file_with_extents(fs, b"f", 8)
    ops = PyfsOperations(fs)
    with pytest.raises(pyfuse3.FUSEError) as info:
        trio.run(ops.setxattr, control.CONTROL_INO, control.COMMAND_XATTR,
                 _command(op="collapse", ino=ino, offset=0, length=BLOCK), ctx(uid=65534, gid=65534))
    assert info.value.errno == errno.EACCES
    assert fs.getattr(ino).size == len(content)
    fs.close()


def test_the_control_file_is_found_by_lookup_but_not_listed(kernel):
    fs = FileSystem.mount(FaultDevice(fresh_image()))
    ops = PyfsOperations(fs)

    async def main():
        attr = await ops.lookup(ROOT, control.CONTROL_NAME, ctx())
        assert attr.st_ino == control.CONTROL_INO
        names = [name for name, _attr, _cookie in fs.readdir(ROOT)]
        assert control.CONTROL_NAME not in names
        stats = await ops.getxattr(control.CONTROL_INO, control.STAT_XATTR, ctx())
        assert b'"long_ops": 0' in stats
        assert await ops.getxattr(control.CONTROL_INO, control.OPS_XATTR, ctx()) == b"[]"
        for call in (ops.mkdir(ROOT, control.CONTROL_NAME, 0o755, ctx()),
                     ops.open(control.CONTROL_INO, os.O_RDONLY, ctx())):
            with pytest.raises(pyfuse3.FUSEError):
                await call

    trio.run(main)
    fs.close()

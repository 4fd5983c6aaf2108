"""The `pyfs` command: mount and unmount images.

    pyfs mount IMAGE MOUNTPOINT [-o OPTS] [--foreground] [--commit SECONDS] [--log FILE] [-v]
    pyfs umount MOUNTPOINT

Promises:
- `mount` without `--foreground` returns only when the filesystem is mounted
  (exit 0) or has failed (exit 1, with the reason on one line); the daemon
  stays in the background.  An image in use, not pyfs, or needing fsck is
  refused with a clear message.
- `fusermount3 -u`, `pyfs umount`, SIGTERM and SIGINT all end in a clean
  unmount: journal flushed, final checkpoint, exit 0.  `pyfs umount` returns
  once the daemon has released the image.
- Exit codes: 0 success, 1 operational error, 2 usage error.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time

from .device import FileDevice
from .engine import EngineOptions
from .format.errors import FormatError

PROG = "pyfs"
log = logging.getLogger("pyfs")


class CliError(Exception):
    pass


def _parse_options(raw: list[str]) -> set[str]:
    opts: set[str] = set()
    for chunk in raw:
        opts.update(o for o in chunk.split(",") if o)
    return opts


def _setup_logging(path: str | None, verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handlers: list[logging.Handler] = []
    if path:
        handlers.append(logging.FileHandler(path))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, handlers=handlers,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)


def _open_filesystem(image: str, read_only: bool):
    from .fs import FileSystem

    try:
        device = FileDevice.open(image, read_only=read_only)
    except FileNotFoundError:
        raise CliError(f"{image}: no such file") from None
    except OSError as exc:
        raise CliError(str(exc) if exc.errno == errno.EBUSY else f"{image}: {exc.strerror or exc}") from None
    try:
        return FileSystem.mount(device, EngineOptions(read_only=read_only))
    except FormatError as exc:
        device.close()
        raise CliError(f"{image}: {exc}; run fsck.pyfs") from None
    except OSError as exc:
        device.close()
        raise CliError(f"{image}: {exc}") from None


def serve(fs, mountpoint: str, options: set[str], commit: float, ready=None) -> None:
    """Mount `fs` at `mountpoint` and serve requests until unmounted or signalled."""
    import pyfuse3
    import trio

    from .fuse import PyfsOperations

    fuse_opts = set(pyfuse3.default_options)
    if "no_default_permissions" in options:
        options.discard("no_default_permissions")
        fuse_opts.discard("default_permissions")
    fuse_opts |= options
    fuse_opts.add(f"fsname=pyfs:{os.path.abspath(fs.engine.device.path)}")
    fuse_opts.add("subtype=pyfs")
    ops = PyfsOperations(fs)
    pyfuse3.init(ops, mountpoint, fuse_opts)
    unmount = False

    async def run() -> None:
        nonlocal unmount
        async with trio.open_nursery() as nursery:
            async def watch_signals() -> None:
                nonlocal unmount
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("signal %d: unmounting", signum)
                        unmount = True
                        pyfuse3.terminate()
                        return

            nursery.start_soon(watch_signals)
            if commit > 0 and not fs.read_only:
                nursery.start_soon(fs.engine.run_commit_timer, commit)
            if ready is not None:
                ready()
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    finally:
        pyfuse3.close(unmount=unmount)
        fs.close()
        log.info("unmounted cleanly")


def cmd_mount(args: argparse.Namespace) -> int:
    options = _parse_options(args.o)
    read_only = "ro" in options
    if not os.path.isdir(args.mountpoint):
        raise CliError(f"{args.mountpoint}: mount point is not a directory")
    if args.foreground:
        _setup_logging(args.log, args.verbose)
        fs = _open_filesystem(args.image, read_only)
        serve(fs, args.mountpoint, options, args.commit)
        return 0
    # Background: the child mounts and reports success or the reason of failure.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 1
        try:
            os.setsid()
            _setup_logging(args.log, args.verbose)
            fs = _open_filesystem(args.image, read_only)

            def ready() -> None:
                os.write(wfd, b"ok\n")
                os.close(wfd)
                devnull = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1) if args.log else (0, 1, 2):
                    os.dup2(devnull, fd)

            serve(fs, args.mountpoint, options, args.commit, ready)
            code = 0
        except CliError as exc:
            _report(wfd, str(exc))
        except Exception as exc:  # noqa: BLE001 - the parent prints it on one line
            _report(wfd, f"mount failed: {exc}")
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message == "ok":
        return 0
    if not message:
        os.waitpid(pid, 0)
        message = "mount failed (the daemon exited without a reason; see --log)"
    raise CliError(message)


def _report(wfd: int, message: str) -> None:
    try:
        os.write(wfd, message.encode() + b"\n")
    except OSError:
        pass


def _mount_source(mountpoint: str) -> str | None:
    """The image behind a pyfs mount, from /proc/self/mountinfo (None if not a pyfs mount)."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-")
                if fields[4] == target and fields[sep + 2].startswith("pyfs:"):
                    return fields[sep + 2][len("pyfs:"):]
    except OSError:
        return None
    return None


def cmd_umount(args: argparse.Namespace) -> int:
    image = _mount_source(args.mountpoint)
    if image is None:
        raise CliError(f"{args.mountpoint}: not a pyfs mount point")
    result = subprocess.run(["fusermount3", "-u", args.mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise CliError(result.stderr.strip() or f"fusermount3 -u {args.mountpoint} failed")
    # The daemon holds the image lock until its final checkpoint is on disk.
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return 0
        except BlockingIOError:
            time.sleep(0.05)
        finally:
            os.close(fd)
    raise CliError(f"unmounted, but the daemon still holds {image} after {args.timeout:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="pyfs: a crash-safe filesystem in userspace")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mount", help="mount an image")
    m.add_argument("image")
    m.add_argument("mountpoint")
    m.add_argument("-o", action="append", default=[], metavar="OPTS",
                   help="mount options: ro, allow_other, no_default_permissions, FUSE options")
    m.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground")
    m.add_argument("--commit", type=float, default=1.0, metavar="SECONDS",
                   help="flush interval without fsync (default 1 s)")
    m.add_argument("--log", metavar="FILE", help="log to FILE")
    m.add_argument("-v", "--verbose", action="store_true")
    m.set_defaults(func=cmd_mount)
    u = sub.add_parser("umount", help="unmount and wait for the final checkpoint")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    u.set_defaults(func=cmd_umount)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "commit", 1.0) is not None and getattr(args, "commit", 1.0) < 0:
        print(f"{PROG}: --commit must not be negative", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except CliError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 1

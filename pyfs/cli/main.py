"""The `pyfs` command: mount and unmount images, and run long operations on a mount.

    pyfs mount IMAGE MOUNTPOINT [-o OPTS] [--foreground] [--commit SECONDS] [--log FILE] [-v]
    pyfs umount MOUNTPOINT
    pyfs collapse FILE OFFSET LENGTH
    pyfs insert FILE OFFSET LENGTH
    pyfs punch FILE OFFSET LENGTH [--no-keep-size]
    pyfs zero FILE OFFSET LENGTH [-n|--keep-size]
    pyfs rmtree DIR
    pyfs ops MOUNTPOINT [--json]
    pyfs stat MOUNTPOINT [--json]
    pyfs flush MOUNTPOINT

The control commands (collapse ... flush) live in `pyfs.cli.control_commands`
over `pyfs.client`; sizes take suffixes k, M, G, T (powers of 1024).  Serving
a mount is `pyfs.mount.serve`; this module keeps the process around it:
opening the image, the daemon's fork and detachment, `umount`'s wait.

Promises (DESIGN.md invariants 8 and 9; tests/test_mount.py, tests/test_control_mount.py):
- `mount` without `--foreground` returns only when the filesystem is mounted
  (exit 0) or has failed (exit 1, with the reason on one line); the daemon
  stays in the background, in "/", holding none of the caller's stdin,
  stdout or stderr (a caller capturing the output gets end of file).  An
  image in use, not pyfs, or needing fsck, and a mount libfuse refuses, are
  refused with a clear one-line message.
- `fusermount3 -u`, `pyfs umount`, SIGTERM and SIGINT all end in a clean
  unmount: journal flushed, final checkpoint, exit 0.  A signal is honoured
  from the moment the kernel mount exists, and one during the final
  checkpoint does not interrupt it (`pyfs.mount.serve`).  `pyfs umount`
  returns once the daemon has released the image (`pyfs.mount.mount_marks`).
- Paths may hold any character: the image path is escaped in the FUSE
  options and unescaped from /proc/self/mountinfo.
- Exit codes: 0 success, 1 operational error, 2 usage error.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..engine.device import FileDevice
from ..engine.engine import EngineOptions
from ..format.errors import FormatError
from ..mount import mount_marks
from .control_commands import add_commands
from .inspect_commands import add_commands as add_inspect_commands

if TYPE_CHECKING:
    from ..fs import FileSystem

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


def _open_filesystem(image: str, read_only: bool, record: str | None = None) -> FileSystem:
    from ..fs import FileSystem

    try:
        device = FileDevice.open(image, read_only=read_only)
    except FileNotFoundError:
        raise CliError(f"{image}: no such file") from None
    except OSError as exc:
        raise CliError(str(exc) if exc.errno == errno.EBUSY else f"{image}: {exc.strerror or exc}") from None
    if record is not None:
        # Tests (tools/crashloop.py): log every write and flush for power-loss replay.
        from ..engine.recorder import RecordingDevice

        try:
            device = RecordingDevice(device, record)
        except OSError as exc:
            device.close()
            raise CliError(f"{record}: {exc.strerror or exc}") from None
    try:
        return FileSystem.mount(device, EngineOptions(read_only=read_only))
    except FormatError as exc:
        device.close()
        raise CliError(f"{image}: {exc}; run fsck.pyfs") from None
    except OSError as exc:
        device.close()
        raise CliError(f"{image}: {exc.strerror or exc}") from None


def _serve(fs: FileSystem, mountpoint: str, options: set[str], commit: float,
           ready: Callable[[], None] | None = None, step_delay: float = 0.0) -> None:
    """`pyfs.mount.serve.serve`, its failures as CliError (one line)."""
    # Imported here: only `mount` needs the FUSE library.
    from ..mount.serve import MountError, serve

    try:
        serve(fs, mountpoint, options, commit, ready, step_delay)
    except MountError as exc:
        raise CliError(str(exc)) from None


def cmd_mount(args: argparse.Namespace) -> int:
    options = _parse_options(args.o)
    read_only = "ro" in options
    # The daemon works from "/" (it must not pin the caller's directory), so
    # every path is made absolute first.
    image = os.path.abspath(args.image)
    mountpoint = os.path.abspath(args.mountpoint)
    log_path = os.path.abspath(args.log) if args.log else None
    record = os.path.abspath(args.record) if getattr(args, "record", None) else None
    if not os.path.isdir(mountpoint):
        raise CliError(f"{args.mountpoint}: mount point is not a directory")
    if args.foreground:
        _setup_logging(log_path, args.verbose)
        fs = _open_filesystem(image, read_only, record)
        _serve(fs, mountpoint, options, args.commit, step_delay=args.step_delay)
        return 0
    # Background: the child mounts and reports success or the reason of failure.
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        code = 1
        serving = False
        try:
            os.setsid()
            os.chdir("/")
            _setup_logging(log_path, args.verbose)
            fs = _open_filesystem(image, read_only, record)

            def ready() -> None:
                nonlocal serving
                os.write(wfd, b"ok\n")
                os.close(wfd)
                serving = True
                _detach_stdio(log_path)

            _serve(fs, mountpoint, options, args.commit, ready, args.step_delay)
            code = 0
        except CliError as exc:
            if serving:
                log.error("%s", exc)
            else:
                _report(wfd, str(exc))
        except Exception as exc:  # noqa: BLE001 - the parent prints it on one line
            if serving:
                log.exception("daemon failed")
            else:
                log.debug("mount failed", exc_info=True)
                _report(wfd, f"mount failed: {exc}")
        finally:
            logging.shutdown()
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        message = pipe.read().decode(errors="replace").strip()
    if message == "ok":
        return 0
    os.waitpid(pid, 0)
    if not message:
        message = "mount failed (the daemon exited without a reason; see --log)"
    raise CliError(message)


def _detach_stdio(log_path: str | None) -> None:
    """The daemon lets go of the caller's terminal or pipes.

    A caller that captures the output of `pyfs mount` waits for end of file
    on it, so none of fds 0-2 may stay open in the daemon.  Whatever reaches
    fd 2 directly (a fatal error of the interpreter) goes to the log, if any.
    """
    devnull = os.open(os.devnull, os.O_RDWR)
    err = devnull
    if log_path:
        try:
            err = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            err = devnull
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(err, 2)
    for fd in {devnull, err}:
        if fd > 2:
            os.close(fd)


def _report(wfd: int, message: str) -> None:
    try:
        os.write(wfd, message.encode() + b"\n")
    except OSError:
        pass


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = os.path.realpath(args.mountpoint)
    image = mount_marks.image_of(mountpoint)
    if image is None:
        raise CliError(f"{args.mountpoint}: not a pyfs mount point")
    result = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        raise CliError(result.stderr.strip() or f"fusermount3 -u {args.mountpoint} failed")
    # The daemon holds the image lock until its final checkpoint is on disk,
    # and (shared or exclusive image lock alike) the lock on the directory
    # under the mount until it has let go of the image.
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if mount_marks.is_unlocked(image) and mount_marks.is_unlocked(mountpoint):
            return 0
        time.sleep(0.05)
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
    # Tests: pause between the steps of long operations, so a kill lands mid-way.
    m.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    # Tests: record every write and flush to FILE (pyfs/engine/recorder.py, tools/crashloop.py).
    m.add_argument("--record", metavar="FILE", help=argparse.SUPPRESS)
    m.set_defaults(func=cmd_mount)
    u = sub.add_parser("umount", help="unmount and wait for the final checkpoint")
    u.add_argument("mountpoint")
    u.add_argument("--timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    u.set_defaults(func=cmd_umount)
    add_commands(sub.add_parser)
    add_inspect_commands(sub.add_parser)
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
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{PROG}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except (FormatError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        log.debug("unexpected error", exc_info=True)
        print(f"{PROG}: unexpected error: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1

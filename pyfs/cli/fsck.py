"""fsck.pyfs: check a pyfs image and repair it.

    fsck.pyfs [-n | -p | -y] [-f] [-v] [--verify-data] [--json] IMAGE

    -n   check only: open the image read-only and never write a byte
    -p   preen: repair what is safe without asking; exit 4 on anything needing a decision
    -y   repair everything fsck can
    (none) on a terminal, ask before each repair (y/n/a/q); without one, act as -n
    -f   check in full even an image that was closed cleanly
    --verify-data   also read every data region and verify its checksum
    --json          print a machine-readable report on stdout instead of lines

Promises (DESIGN.md invariants 8 and 9; proven by tests/test_fsck.py):
- The image is opened through `FileDevice.open`: shared lock for -n,
  exclusive otherwise, so an image that is mounted (or being repaired) is
  refused with exit 8 and the lock's message.
- Errors are one line `fsck.pyfs: <message>` on stderr, never a traceback
  (with -v an unexpected error also prints its traceback).
- Exit codes as fsck(8): 0 no errors, 1 errors corrected, 4 errors left
  uncorrected, 8 operational error (unreadable image, not pyfs), 16 usage
  error, 32 cancelled by the user.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import TextIO

from ..engine.device import DeviceBusy, FileDevice
from ..fsck import EXIT_CANCELLED, EXIT_ERROR, EXIT_USAGE, Options, Report, Result, fsck
from ..fsck.report import PROG, is_terminal


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{PROG}: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Check a pyfs image and repair it.",
        epilog="Exit codes: 0 no errors, 1 errors corrected, 4 errors left uncorrected, "
        "8 operational error, 16 usage error, 32 cancelled.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-n", dest="mode", action="store_const", const="check",
                      help="check only; open the image read-only and write nothing")
    mode.add_argument("-p", "-a", dest="mode", action="store_const", const="preen",
                      help="repair what is safe without asking; exit 4 if anything needs a decision")
    mode.add_argument("-y", dest="mode", action="store_const", const="yes", help="repair everything fsck can")
    parser.add_argument("-f", "--force", action="store_true", help="check in full even if the image was closed cleanly")
    parser.add_argument("-v", "--verbose", action="store_true", help="say more (engine log lines, details)")
    parser.add_argument("--verify-data", action="store_true", help="read every data region and verify its checksum")
    parser.add_argument("--json", action="store_true", help="print a machine-readable report on stdout")
    parser.add_argument("image", metavar="IMAGE", help="image file or block device")
    return parser


class _Logging:
    """The library logs every damaged node it meets; fsck reports those itself unless -v."""

    def __init__(self, verbose: bool, err: TextIO) -> None:
        self.logger = logging.getLogger("pyfs")
        self.saved = (self.logger.propagate, self.logger.level)
        if verbose:
            self.handler: logging.Handler = logging.StreamHandler(err)
            self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
            self.logger.setLevel(logging.INFO)
        else:
            self.handler = logging.NullHandler()
        self.logger.addHandler(self.handler)
        self.logger.propagate = False

    def restore(self) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.propagate, level = self.saved
        self.logger.setLevel(level)


def _open(path: str, read_only: bool) -> FileDevice:
    try:
        return FileDevice.open(path, read_only=read_only)
    except DeviceBusy:
        raise
    except FileNotFoundError:
        raise OSError(f"{path}: no such file") from None
    except OSError as exc:
        raise OSError(f"{path}: {exc.strerror or exc}") from None


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # usage error (16) or --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    stdin = stdin or sys.stdin
    report = Report(stdout, stderr, json_mode=args.json, verbose=args.verbose, image=args.image)
    notes = []
    mode = args.mode
    if mode is None:
        if is_terminal(stdin):
            mode = "ask"
            report.answers = stdin
        else:
            mode = "check"
            notes.append("no terminal to ask on: checking only, as with -n (use -y or -p to repair)")
            report.note(notes[-1])
    logs = _Logging(args.verbose, report.err)
    try:
        try:
            device = _open(args.image, read_only=mode == "check")
        except OSError as exc:
            result = Result(EXIT_ERROR, mode=mode, error=str(exc))
            report.error(str(exc))
        else:
            try:
                result = fsck(device, Options(mode, args.force, args.verify_data), report)
            except KeyboardInterrupt:
                result = Result(EXIT_CANCELLED, mode=mode, error="interrupted")
                report.error("interrupted; the repairs made so far are kept")
            except Exception as exc:  # a bug: one line for the user, the traceback with -v
                result = Result(EXIT_ERROR, mode=mode, error=f"internal error: {exc!r}")
                report.error(f"internal error: {exc!r} (please report it; -v shows the traceback)")
                if args.verbose:
                    traceback.print_exc(file=report.err)
            finally:
                device.close()
    finally:
        logs.restore()
    result.notes[:0] = notes
    report.finish(result)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())

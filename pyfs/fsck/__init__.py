"""fsck for pyfs: check an image as mount would see it, and repair it.

The modules, each importing only those above it in this list:

    findings  a problem found, and the repair that fixes it (the `Repairs` it may ask for)
    state     the decoded keys: fsck's model of the filesystem
    report    lines, questions, progress bars, summary and JSON
    scan      reading superblocks, journal and btrees (in memory, no writes)
    checks    the passes, each returning findings
    repair    the open that salvages, and the repair transactions
    run       the whole: check, repair, check again

The command line is `pyfs/cli/fsck.py` (`fsck.py`, `fsck.pyfs`).
"""

from .findings import Finding
from .report import Report
from .run import (
    EXIT_CANCELLED,
    EXIT_ERROR,
    EXIT_FIXED,
    EXIT_OK,
    EXIT_UNFIXED,
    EXIT_USAGE,
    MODES,
    Options,
    Result,
    fsck,
)

__all__ = [
    "EXIT_CANCELLED", "EXIT_ERROR", "EXIT_FIXED", "EXIT_OK", "EXIT_UNFIXED", "EXIT_USAGE",
    "MODES", "Finding", "Options", "Report", "Result", "fsck",
]

"""The client layer: what programs call on a mounted pyfs, through its control file (no FUSE needed)."""

from .commands import (
    collapse,
    control_file,
    flush,
    insert,
    label_of,
    ops,
    punch,
    range_request,
    rmtree,
    rmtree_request,
    split_for_rmtree,
    stat,
    zero,
)

__all__ = [
    "collapse", "control_file", "flush", "insert", "label_of", "ops", "punch", "range_request",
    "rmtree", "rmtree_request", "split_for_rmtree", "stat", "zero",
]

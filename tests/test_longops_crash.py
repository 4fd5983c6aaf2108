"""Power cuts during long operations and during their recovery (DESIGN.md invariant 7).

Promises proven here (pyfs/fs/longops.py, FileSystem.collapse/insert/punch/
zero/rmtree, big truncates): a file of thousands of extents, on an image
whose 256 KiB journal checkpoints while the operation runs, is collapsed,
inserted into, punched and truncated; a tree of hundreds of inodes is
removed.  Power is cut at writes and flushes of the operation in every crash
mode the FaultDevice has (drop_all, keep_all, keep_some, tear_last); the
mount of each image finishes the operation: the tree then equals the model
before the operation (only if the cut came before the operation's start was
durable) or the model after it, never anything else, no logged op is left
and the engine checker finds nothing.  Images cut in the middle of an
operation are mounted over a FaultDevice whose power is cut at the writes and
flushes of that mount's recovery: the next mount still completes the
operation.

The harness is tools/crashsim.py (`python -m tools.crashsim longops
--exhaustive` cuts at every write and flush of every scenario).  Here, for
CI: every write and flush in one mode for a smaller file, and a fixed-seed
sample of cut points in every mode for the big ones.
"""

from __future__ import annotations

import random

import pytest

from pyfs.engine.fault_device import MODES
from tools.crashsim import (
    LongOpRun,
    LongOpScenario,
    explore_longop,
    explore_recovery,
    fsck_problems,
    mid_op_images,
    run_longop,
)

SEED = 20261121


def sample(run: LongOpRun, count: int, seed: int = SEED) -> list[int]:
    """`count` op counts spread over the run, always the operation's start and end among them."""
    ops = len(run.device.ops)
    picked = set(random.Random(seed).sample(range(ops + 1), min(count, ops + 1)))
    picked |= {0, run.durable_from - 1, run.durable_from, run.op_end, ops}
    return sorted(p for p in picked if 0 <= p <= ops)


def checked_run(sc: LongOpScenario) -> LongOpRun:
    """Run a scenario without faults; it must match its model and really span checkpoints."""
    run = run_longop(sc)
    assert run.problems == []
    assert run.durable_from <= run.op_end, "the operation's start was never flushed while it ran"
    assert run.checkpoints >= 1, "no checkpoint happened during the operation: the journal is too big for the test"
    return run


# -- every write and flush of a smaller file, every mode -------------------------------------------


@pytest.mark.parametrize("kind", ["collapse", "insert"])
def test_every_power_cut_during_a_collapse_or_insert_of_many_steps_gives_before_or_after(kind):
    sc = LongOpScenario(kind, extents=300, step=16, image_size=16 << 20, checkpoint_fill=0.02)
    run = checked_run(sc)
    checked, errors = explore_longop(run, range(len(run.device.ops) + 1), modes=MODES, seed=SEED)
    assert errors == []
    assert checked > len(run.device.ops)


# -- big files: thousands of extents, sampled cut points, every mode ---------------------------------------


@pytest.mark.parametrize("kind,points", [("collapse", 12), ("insert", 12), ("punch", 8), ("truncate", 8)])
def test_power_cuts_during_an_operation_on_3000_extents_give_before_or_after_in_every_mode(kind, points):
    run = checked_run(LongOpScenario(kind, extents=3000, checkpoint_fill=0.05))
    checked, errors = explore_longop(run, sample(run, points), modes=MODES, seed=SEED)
    assert errors == []
    assert checked >= points


def test_power_cuts_during_a_zero_that_grows_the_file_give_before_or_after_in_every_mode():
    run = checked_run(LongOpScenario("zero", extents=600, step=32, image_size=16 << 20, checkpoint_fill=0.02))
    checked, errors = explore_longop(run, sample(run, 12), modes=MODES, seed=SEED)
    assert errors == []


def test_power_cuts_during_an_rmtree_give_the_whole_tree_or_none_of_it_in_every_mode():
    run = checked_run(LongOpScenario("rmtree", extents=800, step=32, checkpoint_fill=0.02))
    checked, errors = explore_longop(run, sample(run, 16), modes=MODES, seed=SEED)
    assert errors == []


# -- power cuts while mount finishes an interrupted operation --------------------------------------------


@pytest.mark.parametrize("sc,points", [
    (LongOpScenario("collapse", extents=3000, checkpoint_fill=0.05), 10),
    (LongOpScenario("insert", extents=300, step=16, image_size=16 << 20, checkpoint_fill=0.02), None),
    (LongOpScenario("rmtree", extents=800, step=32, checkpoint_fill=0.02), 10),
], ids=["collapse", "insert", "rmtree"])
def test_power_cuts_during_the_recovery_at_mount_still_complete_the_operation(sc, points):
    """`points` None: every write and flush of the recovery in every mode; else a sample of them."""
    run = checked_run(sc)
    mids = mid_op_images(run, 1, seed=SEED)
    assert mids, "no crash image holds the operation half done"
    count, image = mids[0]
    checked, errors = explore_recovery(run, image, f"{sc.kind} cut at op {count}", points, modes=MODES, seed=SEED)
    assert errors == []
    assert checked >= (points or 10)


# -- fsck of crash images ------------------------------------------------------------------------------


@pytest.mark.parametrize("sc", [
    LongOpScenario("collapse", extents=300, step=16, image_size=16 << 20, checkpoint_fill=0.02),
    LongOpScenario("insert", extents=300, step=16, image_size=16 << 20, checkpoint_fill=0.02),
    LongOpScenario("punch", extents=600, step=32, image_size=16 << 20, checkpoint_fill=0.02),
    LongOpScenario("zero", extents=600, step=32, image_size=16 << 20, checkpoint_fill=0.02),
    LongOpScenario("truncate", extents=600, step=32, image_size=16 << 20, checkpoint_fill=0.02),
    LongOpScenario("rmtree", extents=800, step=32, checkpoint_fill=0.02),
], ids=lambda sc: sc.kind)
def test_fsck_finds_no_problem_in_images_cut_in_the_middle_of_an_operation(sc):
    """A half-done long operation is a crash state, not damage: `fsck -n` leaves it to mount."""
    run = checked_run(sc)
    mids = mid_op_images(run, 3, seed=SEED)
    assert mids, "no crash image holds the operation half done"
    for count, image in mids:
        assert fsck_problems(image) == [], f"{sc.kind} cut at op {count}"

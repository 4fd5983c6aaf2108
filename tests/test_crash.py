"""Crash simulation of the storage engine (DESIGN.md invariants 1, 3, 4, 6, 7).

The harness lives in tools/crashsim.py, which also runs longer explorations.
Here: a few seeds of a few hundred transactions, power cut at every write and
flush in every mode, and an I/O error injected at every write and flush.
"""

import pytest

from tools.crashsim import explore_io_errors, explore_power_cuts


@pytest.mark.parametrize("seed", [1, 2])
def test_power_cut_at_every_write_and_flush_leaves_a_checked_prefix_of_committed_transactions(seed):
    checked, errors = explore_power_cuts(seed, transactions=250)
    assert checked > 300
    assert errors == []


@pytest.mark.parametrize("seed", [3])
def test_io_error_at_every_write_and_flush_is_reported_and_loses_nothing_acknowledged(seed):
    runs, errors = explore_io_errors(seed, transactions=60)
    assert runs > 40
    assert errors == []

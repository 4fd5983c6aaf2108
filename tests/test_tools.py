"""Tests of the tools under tools/ (each test function is self-contained, so more can be appended)."""


def test_bench_run_quick_on_a_host_directory(tmp_path):
    """`tools/bench.py run DIR --quick --json` on a plain directory: every figure present and positive."""
    import json
    import os
    import subprocess
    import sys

    from tools.bench import FIGURE_NAMES, UNITS

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = tmp_path / "target"
    target.mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "tools", "bench.py"), "run", str(target), "--quick", "--json"],
        capture_output=True, text=True, timeout=120,  # a hang guard; the run takes a few seconds
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    figures = result["figures"]
    assert sorted(figures) == sorted(FIGURE_NAMES)
    for name in FIGURE_NAMES:
        assert figures[name]["unit"] == UNITS[name], name
        value = figures[name]["value"]
        assert isinstance(value, (int, float)) and value > 0, (name, value)
    assert result["info"]["cache_drop"] in ("drop_caches", "none")
    assert list(target.iterdir()) == [], "the bench directory was not cleaned up"


BENCH_ENGINE_FIGURES = {
    "tx_nosync": ("transactions", "seconds", "tx_per_s", "peak_rss_mib"),
    "tx_flush": ("transactions", "seconds", "tx_per_s", "peak_rss_mib"),
    "bulk_batch": ("keys", "seconds", "keys_per_s", "peak_rss_mib"),
    "bulk_single": ("keys", "seconds", "keys_per_s", "peak_rss_mib"),
    "replay": ("entries", "keys", "journal_mib", "seconds", "replay_only_seconds", "peak_rss_mib"),
    "open_clean": ("keys", "seconds", "peak_rss_mib"),
}


def test_bench_engine_quick_run_reports_every_figure(tmp_path):
    """`tools/bench_engine.py --quick --json`: every figure present, checked by the tool, and positive.

    Speed is not asserted (DESIGN.md: no timed assertions); a figure whose own
    check fails (keys lost after reopen, a checkpoint while filling the
    journal, a replay after a clean close) makes the tool exit 1.
    """
    import json
    import os
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(
        [sys.executable, os.path.join(repo, "tools", "bench_engine.py"), "--quick", "--json", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,  # a hang guard; the run takes ~10 s
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout)["figures"]
    assert sorted(figures) == sorted(BENCH_ENGINE_FIGURES)
    for name, fields in BENCH_ENGINE_FIGURES.items():
        for field in fields:
            value = figures[name][field]
            assert isinstance(value, (int, float)) and value > 0, (name, field, value)
    assert figures["open_clean"]["replayed_entries"] == 0
    assert figures["replay"]["entries"] > 1
    assert list(tmp_path.iterdir()) == [], "the bench images were not removed"

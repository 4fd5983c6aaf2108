"""pyfs/client/commands.py and pyfs/cli/control_commands.py without a mount: size parsing, the
requests the client builds (they pass the daemon's own validation in
pyfs/format/control.py), refusals the client decides itself (ENOTTY off pyfs,
EINVAL for negative ranges and for "." or "..", EBUSY for "/"), the output
formats, and the command line's exit codes and one-line messages.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyfs.client import commands as client
from pyfs.format import control
from pyfs.cli.main import main
from pyfs.cli.control_commands import UsageError, format_bytes, format_ops, format_progress, format_stat, parse_size

REPO = Path(__file__).resolve().parent.parent
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40


def raises_errno(err: int, fn, *args, **kwargs) -> OSError:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == err, f"{info.value!r} instead of {os.strerror(err)}"
    return info.value


# -- sizes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("4096", 4096), ("4k", 4 * KiB), ("4K", 4 * KiB), ("4KiB", 4 * KiB), ("4kB", 4 * KiB),
    ("1M", MiB), ("1m", MiB), ("1MiB", MiB), ("1MB", MiB), ("2GiB", 2 * GiB), ("2g", 2 * GiB),
    ("3T", 3 * TiB), ("3tib", 3 * TiB), ("512B", 512), ("  8k ", 8 * KiB),
])
def test_a_size_with_a_binary_suffix_parses_to_bytes(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "k", "-4k", "4x", "1.5M", "4 k", "0x1000", "4kk", "4iB", "4KiBB", "1e3", "4P"])
def test_a_malformed_size_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_size(text)


# -- requests -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["collapse", "insert"])
def test_a_collapse_or_insert_request_passes_the_daemons_validation(op):
    request = client.range_request(op, 42, 4096, 8192, label="/mnt/f")
    assert control.decode(control.encode(request)) == {
        "op": op, "ino": 42, "offset": 4096, "length": 8192, "label": "/mnt/f"}


@pytest.mark.parametrize("op", ["punch", "zero"])
@pytest.mark.parametrize("keep_size", [True, False])
def test_a_punch_or_zero_request_carries_keep_size(op, keep_size):
    request = client.range_request(op, 7, 0, 4096, keep_size=keep_size)
    decoded = control.decode(control.encode(request))
    assert decoded["keep_size"] is keep_size and "label" not in decoded


def test_a_request_for_a_huge_inode_number_round_trips():
    request = client.range_request("collapse", control.CONTROL_INO - 1, 1 << 45, 1 << 40)
    assert control.decode(control.encode(request))["ino"] == control.CONTROL_INO - 1


def test_an_rmtree_request_carries_the_parent_inode_and_a_name_that_is_not_utf8():
    name = b"caf\xe9-\xff"
    request = client.rmtree_request(1, name, label="/mnt/" + os.fsdecode(name))
    decoded = control.decode(control.encode(request))
    assert decoded["parent"] == 1 and control.name_bytes(decoded) == name


def test_a_label_is_the_absolute_path_as_valid_utf8(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert client.label_of("a/b") == str(tmp_path / "a" / "b")
    assert client.label_of(os.fsdecode(b"/mnt/caf\xe9")) == "/mnt/caf\\xe9"
    assert client.label_of(b"/mnt/caf\xc3\xa9") == "/mnt/caf\u00e9"


def test_the_control_wire_names_match_what_the_client_sends():
    assert control.COMMAND_XATTR == b"user.pyfs.command"
    assert set(control.COMMANDS) == {"collapse", "insert", "punch", "zero", "rmtree", "flush"}


@pytest.mark.parametrize("path, parent, name", [
    ("a/b", "a", "b"), ("a/b/", "a", "b"), ("/x/y//", "/x", "y"), ("b", ".", "b"),
])
def test_rmtree_splits_a_path_into_its_resolved_parent_and_final_name(tmp_path, monkeypatch, path, parent, name):
    monkeypatch.chdir(tmp_path)
    assert client.split_for_rmtree(path) == (os.path.realpath(parent), name)


def test_rmtree_resolves_symlinks_in_the_parent_but_not_the_final_name(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    assert client.split_for_rmtree(tmp_path / "link" / "d") == (str(tmp_path / "real"), "d")
    assert client.split_for_rmtree(tmp_path / "link") == (str(tmp_path), "link")


@pytest.mark.parametrize("path", [".", "..", "a/.", "a/..", "/x/../", "./"])
def test_rmtree_of_dot_or_dot_dot_fails_with_einval(path):
    raises_errno(errno.EINVAL, client.rmtree, path)


def test_rmtree_of_the_root_directory_fails_with_ebusy():
    raises_errno(errno.EBUSY, client.rmtree, "/")


# -- refusals without a mount ---------------------------------------------------------------


def test_control_file_of_a_path_outside_pyfs_fails_with_enotty_naming_the_path(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    for path in (tmp_path, tmp_path / "f", "/"):
        exc = raises_errno(errno.ENOTTY, client.control_file, path)
        assert exc.filename == os.fspath(path) and "not on a pyfs filesystem" in exc.strerror


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")
def test_a_control_named_file_at_the_top_of_another_filesystem_is_not_taken_for_pyfs(tmp_path):
    top = tmp_path / "tmpfs"
    top.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(top)], check=True)
    try:
        (top / os.fsdecode(control.CONTROL_NAME)).write_bytes(b"")
        (top / "sub").mkdir()
        raises_errno(errno.ENOTTY, client.control_file, top / "sub")
        raises_errno(errno.ENOTTY, client.ops, top)
    finally:
        subprocess.run(["umount", str(top)], check=True)


@pytest.mark.parametrize("call", [
    lambda p: client.collapse(p, 0, 4096), lambda p: client.insert(p, 0, 4096),
    lambda p: client.punch(p, 0, 4096), lambda p: client.zero(p, 0, 4096),
    client.ops, client.stat, client.flush, client.rmtree,
], ids=["collapse", "insert", "punch", "zero", "ops", "stat", "flush", "rmtree"])
def test_every_call_on_a_path_outside_pyfs_fails_with_enotty(tmp_path, call):
    (tmp_path / "d").mkdir()
    exc = raises_errno(errno.ENOTTY, call, tmp_path / "d")
    assert exc.filename == os.fspath(tmp_path / "d")


def test_rmtree_of_a_file_outside_pyfs_fails_with_enotty(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    raises_errno(errno.ENOTTY, client.rmtree, tmp_path / "f")


def test_a_missing_path_fails_with_enoent_naming_the_path(tmp_path):
    missing = tmp_path / "missing"
    for call in (lambda: client.collapse(missing, 0, 4096), lambda: client.ops(missing), lambda: client.rmtree(missing)):
        exc = raises_errno(errno.ENOENT, call)
        assert exc.filename == os.fspath(missing)


def test_a_negative_offset_or_length_fails_with_einval_before_anything_is_sent(tmp_path):
    raises_errno(errno.EINVAL, client.collapse, tmp_path, -4096, 4096)
    raises_errno(errno.EINVAL, client.zero, tmp_path, 0, -1)


def test_rmtree_of_a_mount_point_fails_with_ebusy():
    mountpoints = [line.split()[4] for line in open("/proc/self/mountinfo") if line.split()[4] not in ("/",)]
    target = next((m for m in mountpoints if m in ("/proc", "/sys", "/dev")), None)
    if target is None:
        pytest.skip("no /proc, /sys or /dev mount point to try")
    raises_errno(errno.EBUSY, client.rmtree, target)


# -- output formats -------------------------------------------------------------------------


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (4 * KiB, "4.0 KiB"), (412 * MiB, "412 MiB"), (GiB, "1.0 GiB"),
    (int(1.5 * GiB), "1.5 GiB"), (3 * TiB, "3.0 TiB"), (5000 * TiB, "5000 TiB"),
])
def test_byte_counts_are_printed_with_binary_units(n, text):
    assert format_bytes(n) == text


def test_progress_in_bytes_shows_the_percentage_and_both_sizes():
    op = {"kind": "collapse", "done": 412 * MiB, "total": 1112 * MiB, "unit": "bytes"}
    assert format_progress(op) == "37% (412 MiB of 1.1 GiB)"
    assert format_progress({**op, "total": None}) == "412 MiB"


def test_progress_in_entries_shows_the_count():
    assert format_progress({"done": 12034, "total": None, "unit": "entries"}) == "12034 entries"
    assert format_progress({"done": 12034, "total": 20000, "unit": "entries"}) == "60% (12034 of 20000 entries)"


def test_the_ops_table_names_files_by_label_or_inode():
    table = format_ops([
        {"kind": "collapse", "ino": 12, "label": "/mnt/big", "done": 0, "total": GiB, "unit": "bytes"},
        {"kind": "delete", "ino": 99, "label": None, "done": 3 * MiB, "total": None, "unit": "bytes"},
    ])
    lines = table.splitlines()
    assert lines[0].split() == ["KIND", "FILE", "PROGRESS"]
    assert lines[1].split() == ["collapse", "/mnt/big", "0%", "(0", "B", "of", "1.0", "GiB)"]
    assert lines[2].split() == ["delete", "inode", "99", "3.0", "MiB"]
    assert format_ops([]) == "no long operations running"


def test_a_label_that_is_not_utf8_is_printed_with_escapes():
    table = format_ops([{"kind": "rmtree", "ino": 5, "label": os.fsdecode(b"/mnt/caf\xe9"), "done": 3, "total": None,
                         "unit": "entries"}])
    assert "/mnt/caf\\xe9" in table
    table.encode("utf-8")  # printable on a UTF-8 terminal


def test_the_stat_summary_shows_space_keys_journal_and_counts():
    text = format_stat({
        "space": {"total_bytes": GiB, "free_bytes": 512 * MiB, "avail_bytes": 500 * MiB}, "inodes": 17,
        "keys": {"inodes": 17, "dirents": 16}, "journal": {"bytes": 4 * MiB, "fill": 0.125},
        "seq": 90, "durable_seq": 88, "checkpoints": 3, "commits": 85, "long_ops": 1})
    assert "512 MiB free of 1.0 GiB (500 MiB available)" in text
    assert "dirents 16, inodes 17" in text and "12.5% full" in text
    assert "commits:      85 (seq 90, durable 88)" in text and "checkpoints:  3" in text


# -- the command line -----------------------------------------------------------------------


def run_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pyfs", *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize("argv", [
    ["collapse", "F", "4x", "4k"], ["insert", "F", "4k", "-1"], ["punch", "F", "4k"], ["zero", "F"],
    ["collapse", "F", "1.5M", "4k"], ["rmtree"], ["ops"], ["stat", "a", "b"], ["flush", "--bogus", "m"],
    ["zero", "F", "0", "4k", "--keep-size=yes"],
])
def test_a_usage_error_exits_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as info:
        code = main(argv)
        raise SystemExit(code)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"pyfs {argv[0]}: ")


def test_a_command_on_a_path_outside_pyfs_exits_1_with_one_line_naming_enotty(tmp_path):
    result = run_cli("collapse", tmp_path, "0", "4k")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"pyfs: collapse {tmp_path}: not on a pyfs filesystem (ENOTTY)\n"


@pytest.mark.parametrize("argv", [["ops"], ["stat"], ["flush"], ["rmtree"], ["punch", "0", "4k"], ["zero", "0", "4k"]])
def test_every_control_command_outside_pyfs_exits_1_with_one_line(capsys, tmp_path, argv):
    assert main([argv[0], str(tmp_path), *argv[1:]]) == 1
    err = capsys.readouterr().err
    assert err == f"pyfs: {argv[0]} {tmp_path}: not on a pyfs filesystem (ENOTTY)\n"


def test_a_missing_file_exits_1_naming_enoent(capsys, tmp_path):
    assert main(["insert", str(tmp_path / "nope"), "0", "4k"]) == 1
    assert capsys.readouterr().err == f"pyfs: insert {tmp_path / 'nope'}: No such file or directory (ENOENT)\n"


def test_the_usage_block_of_pyfs_lists_the_control_commands():
    import pyfs.cli.main

    for command in ("collapse", "insert", "punch", "zero", "rmtree", "ops", "stat", "flush"):
        assert f"    pyfs {command} " in pyfs.cli.main.__doc__
    result = run_cli("--help")
    assert result.returncode == 0 and "collapse" in result.stdout and "rmtree" in result.stdout


def test_the_client_imports_no_fuse_library():
    code = ("import sys, pyfs.client, pyfs.cli.control_commands; "
            "print(json.dumps(sorted(m for m in sys.modules if 'fuse' in m or m == 'trio')))")
    result = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []

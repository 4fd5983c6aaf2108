#!/usr/bin/env python3
"""Rebuild a crashloop run from its operations log, and re-check a kept image against it.

    python tools/crashloop_replay.py WORKDIR                     # rounds and recovered prefixes
    python tools/crashloop_replay.py WORKDIR --image IMG --round N [--log-pos P]

`ops.jsonl` (tools/crashloop.py) holds every operation with its complete
arguments, the recording-log positions around it, every durability point
and, per remount, which prefix of which round was recovered.  `load` replays
that onto a fresh model, so the model of any round at any prefix can be
rebuilt without the run.  With --image, the image (a kept crash image, or a
copy of pyfs.img taken before a remount) is mounted in process, and its tree
is checked against round N's allowed states as the run did; the report
lists, for each allowed prefix, how many paths differ.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from crashloop_model import Model, Op, diff_states  # noqa: E402
from crashloop_workload import Durable, RoundLog  # noqa: E402


@dataclass
class Run:
    """A run rebuilt from its log: a RoundLog per round that ran operations."""

    umask: int = 0o022
    rounds: dict[int, RoundLog] = field(default_factory=dict)
    finals: dict[int, Model] = field(default_factory=dict)  # model after every applied op of the round
    recovered: list[dict] = field(default_factory=list)


def load(workdir: str, umask: int = 0o022) -> Run:
    """Replay `WORKDIR/ops.jsonl` (see the module docstring)."""
    events = [json.loads(line) for line in open(os.path.join(workdir, "ops.jsonl"), encoding="utf-8")]
    run = Run(umask)
    starts: dict[int, dict] = {}
    model = Model(umask)
    current: RoundLog | None = None
    rounds_of_op: dict[int, int] = {}
    for e in events:
        ev = e["ev"]
        if ev == "recovered":
            run.recovered.append(e)
            number = e.get("ops_round")
            if number is None:  # logs from before ops_round was recorded: the latest round with operations
                number = max((n for n in run.rounds if n < e["round"]), default=0)
            src = run.rounds.get(number)
            if src is None:
                model = Model(umask)
            else:
                model = _recovered_model(src, run.finals[src.number], e)
        elif ev == "start":
            starts[e["i"]] = e
            rounds_of_op[e["i"]] = e["round"]
            if current is None or current.number != e["round"]:
                current = RoundLog(e["round"], model.copy())
                current.begin()
                run.rounds[e["round"]] = current
            current.inflight = Op(e["i"], e["kind"], e["args"])
            current.inflight_pos = e.get("pos", 0)
        elif ev == "done" and current is not None:
            s = starts[e["i"]]
            op = Op(e["i"], s["kind"], e["args"])
            model.apply(op)
            current.record(op, model.state(), s.get("pos", 0), e["t"])
            current.inflight = None
            run.finals[current.number] = model
        elif ev == "durable" and current is not None:
            current.durables.append(Durable(e["prefix"], e.get("pos", 0), e["t"]))
        elif ev == "fail" and current is not None:
            current.inflight = None
            current.failed += 1
    for number, rlog in run.rounds.items():
        run.finals.setdefault(number, rlog.start)
    return run


def _recovered_model(src: RoundLog, final: Model, e: dict) -> Model:
    if e["prefix"] >= len(src.applied) and not e.get("inflight"):
        m = final.copy()
    else:
        m = src.model_after(e["prefix"])
    if e.get("inflight") and src.inflight is not None:
        m.apply(src.inflight)
    if e.get("torn_op"):
        t = e["torn_op"]
        m.apply(Op(t["index"], t["kind"], t["args"]))
    m.prune()
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir")
    p.add_argument("--image", help="check this image against the round's allowed states")
    p.add_argument("--round", type=int, help="the round whose operations the image may hold")
    p.add_argument("--log-pos", type=int, help="recording log offset of the cut (power-cut images)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pyfs").setLevel(logging.CRITICAL)
    run = load(args.workdir)
    for number, rlog in sorted(run.rounds.items()):
        print(f"round {number}: {len(rlog.applied)} operations (#{rlog.applied[0].index if rlog.applied else '-'}"
              f"..), {len(rlog.durables)} durability points, in flight: "
              f"{rlog.inflight.describe() if rlog.inflight else 'none'}")
    for e in run.recovered:
        print(f"mount of round {e['round']}: recovered prefix {e['prefix']} of round {e.get('ops_round')}'s "
              f"{e['of']} operations{' + the in-flight one' if e.get('inflight') else ''}"
              f"{' + a torn write' if e.get('torn_op') else ''}")
    if not args.image:
        return 0
    from crashloop import Expectation, check_tree
    from crashloop_power import OverlayDevice, PageImage, read_tree

    from pyfs.fs import FileSystem

    if args.round not in run.rounds:
        print(f"no round {args.round} with operations in the log", file=sys.stderr)
        return 2
    rlog = run.rounds[args.round]
    expect = Expectation(rlog, run.finals[args.round])
    fd = os.open(args.image, os.O_RDONLY)
    fs = FileSystem.mount(OverlayDevice(PageImage(fd, os.fstat(fd).st_size)))
    state, contents = read_tree(fs, keep_content=True)
    lo, hi, inflight = expect.bounds(args.log_pos)
    m = rlog.start.copy()
    for k in range(0, hi + 1):
        if k:
            m.apply(rlog.applied[k - 1])
        if k >= lo:
            d = diff_states(m.state(), state, limit=5)
            print(f"prefix {k} ({rlog.applied[k - 1].describe()[:90] if k else 'round start'}): "
                  f"{len(d)}{'+' if len(d) == 5 else ''} differences {d[:2]}")
    outcome = check_tree(state, expect, args.log_pos, lambda path: contents[path], "kept image", args.round)
    if outcome.violation is None:
        print(f"OK: the image holds prefix {outcome.prefix}{' (torn write)' if outcome.torn else ''}")
        return 0
    for line in outcome.violation.lines():
        print(line)
    return 1


if __name__ == "__main__":
    sys.exit(main())

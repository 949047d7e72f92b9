"""The share of a whole ``dvc repro`` spent outside training, search and measurement (goal: at
most 15 %).

Builds a scratch git + DVC project from this one (the default params.yaml, ``--profile`` files
merged on top), runs ``dvc repro`` in it ``--runs`` times from a clean state (``-f``, so that DVC
restores nothing), each with ``PIPELINE_WORK_LOG`` set: every pipeline command then logs its wall
time and its *work* seconds (training loops, every trial's included; test-split quality, latency
and inference energy: ``pipeline.worktime``). Prints the whole repro's wall time, the work, and
what is outside it: in the commands (interpreter start, imports, params, data, MLflow, exports,
plots) and in DVC between them; then the same per stage kind.

Commands run as ``dvc repro`` runs them for a user: the first starts a warm server
(``pipeline.warm``) and the others run in it; ``--alone`` runs each in a process of its own.

    python benchmarks/repro_share.py [--profile profiles/ucr.yaml] [--runs 1] [--alone] [--keep]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import done_with, scratch_project, stage_count, summary, timed_run  # noqa: E402

CLEAN = ["data/prepared", "models", "mlruns", "optuna", "metrics", "plots", "reports"]


def one_repro(d: Path, env: dict, log: Path) -> tuple[float, list[dict]]:
    """Wall seconds of ``dvc repro -f`` from a clean state, and the lines its commands logged."""
    for out in CLEAN:
        shutil.rmtree(d / out, ignore_errors=True)
    log.unlink(missing_ok=True)
    t0 = time.perf_counter()
    timed_run(["dvc", "repro", "-f", "-q"], d, {**env, "PIPELINE_WORK_LOG": str(log)}, timeout=4 * 3600)
    wall = time.perf_counter() - t0
    return wall, [json.loads(line) for line in log.read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, action="append", default=[], help="profile merged into params.yaml")
    ap.add_argument("--runs", type=int, default=1, help="whole repros (each takes minutes)")
    ap.add_argument("--alone", action="store_true", help="every command in its own process (PIPELINE_WARM=0)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch project (its path is printed)")
    args = ap.parse_args()

    d, env = scratch_project("repro-share-", args.profile)
    env["PIPELINE_WARM"] = "0" if args.alone else "1"
    print(f"{d}: {stage_count(d, env)} stages, commands "
          f"{'each in its own process' if args.alone else 'in a warm server'}", flush=True)
    walls, works, in_commands, shares = [], [], [], []
    by_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i in range(args.runs):
        wall, lines = one_repro(d, env, d / "work-log.jsonl")
        work = sum(line["work_s"] for line in lines)
        commands = sum(line["wall_s"] for line in lines)
        walls.append(wall)
        works.append(work)
        in_commands.append(commands - work)
        shares.append(1 - work / wall)
        for line in lines:
            kind = by_kind[line["argv"][0]]
            kind["wall"].append(line["wall_s"])
            kind["work"].append(line["work_s"])
        print(f"run {i + 1}: {len(lines)} commands, dvc repro {wall:.0f} s, work {work:.0f} s, outside it "
              f"{wall - work:.0f} s ({1 - work / wall:.1%}): in the commands {commands - work:.0f} s, "
              f"in DVC {wall - commands:.0f} s", flush=True)
    print()
    print(f"dvc repro -f: {summary(walls, 's', 0)}; work (training, trials, measurement): {summary(works, 's', 0)}")
    print(f"outside the work, in the commands: {summary(in_commands, 's', 0)}; "
          f"in DVC: {summary([w - c - k for w, c, k in zip(walls, in_commands, works, strict=True)], 's', 0)}")
    print(f"share outside the work: {statistics.median(shares):.1%} [{min(shares):.1%}-{max(shares):.1%}] "
          "(goal: <= 15 %)")
    print()
    print(f"{'command':<10} {'count':>5} {'wall (s)':>9} {'work (s)':>9} {'outside (s), median per command':>32}")
    for kind, t in sorted(by_kind.items()):
        outside = [w - k for w, k in zip(t["wall"], t["work"], strict=True)]
        print(f"{kind:<10} {len(t['wall']) // args.runs:>5} {sum(t['wall']) / args.runs:>9.1f} "
              f"{sum(t['work']) / args.runs:>9.1f} {statistics.median(outside):>32.2f}")
    done_with(d, args.keep)


if __name__ == "__main__":
    main()

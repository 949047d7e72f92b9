"""Time ``dvc repro`` when nothing changed (goal: at most 1.5 s).

Builds a scratch git + DVC project from this one (pipeline/, examples/, dvc.yaml, params.yaml with
``--profile`` files merged on top by ``python -m pipeline apply-profile``), shrunk so that its one
full ``dvc repro`` takes minutes (600 MNIST-1D samples, 1-2 epochs, 2 trials: the stage graph is
the profile's own, the work in each stage small). Then alternates ``--runs`` times the no-op
``dvc repro`` with the floor ``dvc --version`` (DVC's own start) and prints both medians [range].

    python benchmarks/noop_repro.py [--profile profiles/ucr.yaml] [--runs 5] [--keep]

It also prints the length of the project's dvc.lock, which DVC reads on every no-op repro and
rewrites after every stage it runs.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import done_with, scratch_project, stage_count, summary, timed_run  # noqa: E402

# Small work, the same stages: what no-op repro costs depends on the graph, not on the work.
SHRINK = {
    "data": {"mnist1d": {"num_samples": 600}},
    "train": {"max_epochs": 2, "early_stopping_patience": 0},
    "evaluate": {"latency_samples": 10, "energy_min_duration_s": 0.2},
    "tune": {"search": {"n_trials": 2, "max_epochs": 1, "startup_trials": 1, "warmup_epochs": 0}},
    "compress": {"prune": {"finetune_epochs": 1}, "distill": {"epochs": 1}},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, action="append", default=[], help="profile merged into params.yaml")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch project (its path is printed)")
    args = ap.parse_args()

    shrink = Path(tempfile.mkdtemp(prefix="noop-repro-shrink-")) / "shrink.yaml"
    shrink.write_text(yaml.safe_dump(SHRINK))
    d, env = scratch_project("noop-repro-", args.profile, shrink)
    shutil.rmtree(shrink.parent)
    profiles = [p.resolve() for p in args.profile]
    stages = stage_count(d, env)
    print(f"{d}: {stages} stages ({', '.join(map(str, profiles)) or 'params.yaml'}); first dvc repro ...", flush=True)
    print(f"first dvc repro: {timed_run(['dvc', 'repro'], d, env)[0]:.0f} s", flush=True)
    print(f"dvc.lock: {len((d / 'dvc.lock').read_text().splitlines())} lines", flush=True)
    noop, floor = [], []
    for i in range(args.runs):
        floor.append(timed_run(["dvc", "--version"], d, env)[0])
        noop.append(timed_run(["dvc", "repro"], d, env)[0])
        print(f"run {i + 1}: dvc --version {floor[-1]:.2f} s, no-op dvc repro {noop[-1]:.2f} s", flush=True)
    print()
    print(f"no-op `dvc repro` over {stages} stages: {summary(noop, 's', 2)} (goal: <= 1.5 s)")
    print(f"`dvc --version` (DVC's start): {summary(floor, 's', 2)}")
    done_with(d, args.keep)


if __name__ == "__main__":
    main()

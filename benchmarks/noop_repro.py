"""Time ``dvc repro`` when nothing changed (goal: at most 1.5 s).

Builds a scratch git + DVC project from this one (pipeline/, examples/, dvc.yaml, params.yaml with
``--profile`` files merged on top by ``python -m pipeline apply-profile``), shrunk so that its one
full ``dvc repro`` takes minutes (600 MNIST-1D samples, 1-2 epochs, 2 trials: the stage graph is
the profile's own, the work in each stage small). Beside it, DVC's own floor for that many stages:
a project of as many trivial stages (each one file dependency and one output, no params), the
least a no-op ``dvc repro`` of a graph that size costs whatever the pipeline.
Then alternates ``--runs`` times ``dvc --version`` (DVC's start), the floor's no-op ``dvc repro``
and the project's, and prints their medians [range] and the project's ratio to the floor.

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

from benchmarks._common import GIT, done_with, scratch_project, stage_count, summary, timed_run  # noqa: E402

# Small work, the same stages: what no-op repro costs depends on the graph, not on the work.
SHRINK = {
    "data": {"mnist1d": {"num_samples": 600}},
    "train": {"max_epochs": 2, "early_stopping_patience": 0},
    "evaluate": {"latency_samples": 10, "energy_min_duration_s": 0.2},
    "tune": {"search": {"n_trials": 2, "max_epochs": 1, "startup_trials": 1, "warmup_epochs": 0}},
    "compress": {"prune": {"finetune_epochs": 1}, "distill": {"epochs": 1}},
}


def trivial_graph(stages: int, env: dict) -> Path:
    """A committed git + DVC project of ``stages`` trivial stages, reproduced once: each copies
    one small file into one output."""
    d = Path(tempfile.mkdtemp(prefix="noop-repro-floor-"))
    (d / "in.txt").write_text("input\n")
    graph = {f"s{i}": {"cmd": f"cp in.txt out{i}.txt", "deps": ["in.txt"], "outs": [f"out{i}.txt"]}
             for i in range(stages)}
    (d / "dvc.yaml").write_text(yaml.safe_dump({"stages": graph}))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"], GIT + ["add", "-A"],
                GIT + ["commit", "-qm", "init"]):
        timed_run(cmd, d, env)
    return d


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
    trivial = trivial_graph(stages, env)
    noop, start, floor = [], [], []
    for i in range(args.runs):
        start.append(timed_run(["dvc", "--version"], d, env)[0])
        floor.append(timed_run(["dvc", "repro"], trivial, env)[0])
        noop.append(timed_run(["dvc", "repro"], d, env)[0])
        print(f"run {i + 1}: dvc --version {start[-1]:.2f} s, no-op dvc repro of {stages} trivial stages "
              f"{floor[-1]:.2f} s, of the project {noop[-1]:.2f} s", flush=True)
    print()
    print(f"no-op `dvc repro` over {stages} stages: {summary(noop, 's', 2)} (goal: <= 1.5 s)")
    print(f"DVC's floor, no-op `dvc repro` of {stages} trivial stages: {summary(floor, 's', 2)}; "
          f"project / floor {summary([a / b for a, b in zip(noop, floor, strict=True)], 'x', 2)}")
    print(f"`dvc --version` (DVC's start): {summary(start, 's', 2)}")
    shutil.rmtree(trivial, ignore_errors=True)
    done_with(d, args.keep)


if __name__ == "__main__":
    main()

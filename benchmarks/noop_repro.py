"""Time ``dvc repro`` when nothing changed (goal: at most 1.5 s).

Builds a scratch git + DVC project from this one (pipeline/, examples/, dvc.yaml, params.yaml with
``--profile`` files merged on top by ``python -m pipeline apply-profile``), shrunk so that its one
full ``dvc repro`` takes minutes (600 MNIST-1D samples, 1-2 epochs, 2 trials: the stage graph is
the profile's own, the work in each stage small). Then alternates ``--runs`` times the no-op
``dvc repro`` with the floor ``dvc --version`` (DVC's own start) and prints both medians [range].

    python benchmarks/noop_repro.py [--profile profiles/ucr.yaml] [--runs 5] [--package-deps]

``--package-deps`` also times, alternated with the rest, a copy of the scratch project whose stages
depend on the whole ``pipeline`` package instead of the modules each imports (dvc.lock recorded
anew with ``dvc commit -f``): what the per-module dependencies cost a no-op repro.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import scratch_project, stage_count, summary, timed_run  # noqa: E402

# Small work, the same stages: what no-op repro costs depends on the graph, not on the work.
SHRINK = {
    "data": {"mnist1d": {"num_samples": 600}},
    "train": {"max_epochs": 2, "early_stopping_patience": 0},
    "evaluate": {"latency_samples": 10, "energy_min_duration_s": 0.2},
    "tune": {"search": {"n_trials": 2, "max_epochs": 1, "startup_trials": 1, "warmup_epochs": 0}},
    "compress": {"prune": {"finetune_epochs": 1}, "distill": {"epochs": 1}},
}


def package_deps_copy(d: Path, env: dict) -> Path:
    """A copy of the scratch project whose stages list ``pipeline`` as their one code dependency,
    its dvc.lock recorded anew (``dvc commit -f``) without running anything."""
    copy = Path(f"{d}-package-deps")
    shutil.copytree(d, copy, symlinks=True)
    spec = yaml.safe_load((copy / "dvc.yaml").read_text())
    for stage in spec["stages"].values():
        body = stage.get("do", stage)  # foreach stages keep theirs under do
        body["deps"] = [dep for dep in body["deps"] if not str(dep).startswith("pipeline")] + ["pipeline"]
    (copy / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    timed_run(["dvc", "commit", "-f", "-q"], copy, env)
    lines = {where: len((where / "dvc.lock").read_text().splitlines()) for where in (d, copy)}
    print(f"{copy}: one pipeline package dep per stage (dvc.lock {lines[copy]} lines, against {lines[d]})", flush=True)
    return copy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, action="append", default=[], help="profile merged into params.yaml")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the scratch project (its path is printed)")
    ap.add_argument("--package-deps", action="store_true",
                    help="also time a copy whose stages depend on the whole pipeline package")
    args = ap.parse_args()

    shrink = Path(tempfile.mkdtemp(prefix="noop-repro-shrink-")) / "shrink.yaml"
    shrink.write_text(yaml.safe_dump(SHRINK))
    d, env = scratch_project("noop-repro-", args.profile, shrink)
    shutil.rmtree(shrink.parent)
    profiles = [p.resolve() for p in args.profile]
    stages = stage_count(d, env)
    print(f"{d}: {stages} stages ({', '.join(map(str, profiles)) or 'params.yaml'}); first dvc repro ...", flush=True)
    print(f"first dvc repro: {timed_run(['dvc', 'repro'], d, env)[0]:.0f} s", flush=True)
    projects = {"per-module deps": d}
    if args.package_deps:
        projects["one pipeline package dep"] = package_deps_copy(d, env)
    noop: dict[str, list[float]] = {name: [] for name in projects}
    floor = []
    for i in range(args.runs):
        floor.append(timed_run(["dvc", "--version"], d, env)[0])
        for name, where in projects.items():
            noop[name].append(timed_run(["dvc", "repro"], where, env)[0])
        print(f"run {i + 1}: dvc --version {floor[-1]:.2f} s, no-op dvc repro "
              + ", ".join(f"{name} {times[-1]:.2f} s" for name, times in noop.items()), flush=True)
    print()
    for name, times in noop.items():
        print(f"no-op `dvc repro` over {stages} stages, {name}: {summary(times, 's', 2)} (goal: <= 1.5 s)")
    print(f"`dvc --version` (DVC's start): {summary(floor, 's', 2)}")
    if not args.keep:
        for where in projects.values():
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()

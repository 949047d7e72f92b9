"""The fixed cost of one stage: what ``python -m pipeline train`` spends beside its training.

In a scratch project (params.yaml, data prepared once), alternates ``--runs`` times:

- the floor: ``python -c "import torch, lightning, mlflow, codecarbon"``, the imports any
  training stage needs, and nothing else;
- the stage: ``python -m pipeline train --family <family>``, its wall time less the training time
  it prints (the measured window of ``fit``: epochs, validation, energy readings).

Prints each run, then medians [range] and the stage's fixed cost over the floor's time (goal:
at most 1.0: nothing beyond the imports a stage needs).

    python benchmarks/stage_overhead.py [--family mlp] [--runs 5]
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, pipeline_env, summary, timed_run  # noqa: E402

FLOOR = "import torch, lightning, mlflow, codecarbon"
TRAINED = re.compile(r"^trained \S+: .*?, ([0-9.]+) s, ", re.M)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="mlp")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = ap.parse_args()

    d = Path(tempfile.mkdtemp(prefix="stage-overhead-"))
    shutil.copy(args.params, d / "params.yaml")
    env = pipeline_env()
    timed_run([sys.executable, "-m", "pipeline", "prepare"], d, env)
    floors, stages, fixed = [], [], []
    for i in range(args.runs):
        floor, _ = timed_run([sys.executable, "-c", FLOOR], d, env)
        wall, out = timed_run([sys.executable, "-m", "pipeline", "train", "--family", args.family], d, env)
        m = TRAINED.search(out)
        if not m:
            raise SystemExit(f"no training time in the stage's output:\n{out}")
        training = float(m.group(1))
        floors.append(floor)
        stages.append(wall)
        fixed.append(wall - training)
        print(f"run {i + 1}: imports floor {floor:.2f} s; stage {wall:.2f} s, training {training:.2f} s, "
              f"fixed {wall - training:.2f} s", flush=True)
    ratios = [f / fl for f, fl in zip(fixed, floors, strict=True)]
    print(f"\nimports floor ({FLOOR}): {summary(floors, 's', 2)}")
    print(f"stage `python -m pipeline train --family {args.family}`: {summary(stages, 's', 2)}")
    print(f"fixed cost (stage less its training): {summary(fixed, 's', 2)}")
    print(f"fixed cost / floor, run by run: {summary(ratios, 'x', 2)} (goal: <= 1.0)")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()

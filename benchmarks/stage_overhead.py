"""The fixed cost of one stage: what ``python -m pipeline train`` spends beside its training.

In a scratch project (params.yaml, data prepared once), alternates ``--runs`` times:

- the floor: ``python -c "import torch, lightning, mlflow, codecarbon"``, the imports any
  training stage needs, and nothing else;
- the stage in a process of its own (``PIPELINE_WARM=0``): its wall time less the training time
  it prints (the measured window of ``fit``: epochs, validation, energy readings);
- the same stage run in a warm server (``pipeline.warm``, started once before the first run, in a
  socket folder of this script's own).

Prints each run, then medians [range] and each fixed cost over the floor's time (goal: at most
1.0: nothing beyond the imports a stage needs).

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
from pipeline import warm  # noqa: E402

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
    kinds = {"alone": {**env, "PIPELINE_WARM": "0"},
             "warm": {**env, "PIPELINE_WARM": "1", "XDG_RUNTIME_DIR": str(d)}}
    timed_run([sys.executable, "-m", "pipeline", "prepare"], d, kinds["alone"])
    warm.start(kinds["warm"], cwd=d)
    train = [sys.executable, "-m", "pipeline", "train", "--family", args.family]
    floors: list[float] = []
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    fixed: dict[str, list[float]] = {k: [] for k in kinds}
    try:
        for i in range(args.runs):
            floor, _ = timed_run([sys.executable, "-c", FLOOR], d, env)
            floors.append(floor)
            said = [f"run {i + 1}: imports floor {floor:.2f} s"]
            for kind, kind_env in kinds.items():
                wall, out = timed_run(train, d, kind_env)
                m = TRAINED.search(out)
                if not m:
                    raise SystemExit(f"no training time in the stage's output:\n{out}")
                walls[kind].append(wall)
                fixed[kind].append(wall - float(m.group(1)))
                said.append(f"{kind}: stage {wall:.2f} s, training {float(m.group(1)):.2f} s, fixed {fixed[kind][-1]:.2f} s")
            print("; ".join(said), flush=True)
    finally:
        warm.stop(kinds["warm"])
    print(f"\nimports floor ({FLOOR}): {summary(floors, 's', 2)}")
    for kind in kinds:
        ratios = [f / fl for f, fl in zip(fixed[kind], floors, strict=True)]
        print(f"{kind}: stage `{' '.join(train[1:])}` {summary(walls[kind], 's', 2)}; fixed cost (stage less its "
              f"training) {summary(fixed[kind], 's', 2)}; / floor, run by run: {summary(ratios, 'x', 2)} (goal: <= 1.0)")
    shutil.rmtree(d, ignore_errors=True)

if __name__ == "__main__":
    main()

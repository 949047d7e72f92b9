"""Test accuracy of every family on UCR archive problems with the archive's own train/test split,
beside the published figures for MLP and FCN: does the pipeline, with the same defaults for every
problem (params.yaml + ``profiles/ucr.yaml``), reproduce what the literature reports?

For each problem it prepares the data, trains each family (the train stage's code, with its early
stopping and checkpoint choice on a validation part of the archive's train split) and tests it
on the archive's test split, in a temporary workspace with its own MLflow store (the project's
outputs are left as they are; ``--keep`` keeps the workspace). The search, sweep and compression
are not run: this is the baseline of each family.

    python benchmarks/ucr_accuracy.py [--datasets GunPoint,ArrowHead,OSULeaf] [--families mlp,fcn] [--seed 42]

Published test accuracies (official split):
- [W] Wang, Yan & Oates, "Time series classification from scratch with deep neural networks: a
  strong baseline", IJCNN 2017: test error rates in the authors' repository
  cauchyturing/UCR_Time_Series_Classification_Deep_Learning_Baseline (README, commit 3ecc897).
- [F] Ismail Fawaz et al., "Deep learning for time series classification: a review", DMKD 2019:
  mean accuracy of 10 runs, hfawaz/dl-4-tsc results/results-uea-avg-std.csv (commit e0233ef).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# problem -> model -> (accuracy, source); accuracy = 1 - published error for [W].
PUBLISHED = {
    "GunPoint": {"mlp": ((1 - 0.067, "W"), (0.927, "F")), "fcn": ((1.0, "W"), (1.0, "F"))},
    "ArrowHead": {"mlp": ((1 - 0.177, "W"), (0.778, "F")), "fcn": ((1 - 0.120, "W"), (0.843, "F"))},
    "OSULeaf": {"mlp": ((1 - 0.43, "W"), (0.557, "F")), "fcn": ((1 - 0.012, "W"), (0.977, "F"))},
    "ItalyPowerDemand": {"mlp": ((1 - 0.034, "W"), (0.954, "F")), "fcn": ((1 - 0.03, "W"), (0.961, "F"))},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="GunPoint,ArrowHead,OSULeaf")
    ap.add_argument("--families", default="", help="comma-separated (default: the profile's families)")
    ap.add_argument("--profile", default=str(ROOT / "profiles" / "ucr.yaml"))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    import yaml

    from pipeline.config import apply_profiles, parse_params
    from pipeline.data.prepare import prepare, save
    from pipeline.energy import EnergyMeter
    from pipeline.evaluation.evaluate import evaluate_family
    from pipeline.training.train import train_family

    base = apply_profiles(ROOT / "params.yaml", [args.profile])
    work = Path(tempfile.mkdtemp(prefix="ucr-accuracy-"))
    shutil.copytree(ROOT / "examples", work / "examples")
    os.chdir(work)
    rows = []
    meter = None
    try:
        for name in args.datasets.split(","):
            raw = yaml.safe_load(yaml.safe_dump(base))
            raw["data"]["ucr"]["name"] = name
            if args.seed is not None:
                raw["base"]["seed"] = args.seed
            raw["tracking"] = {**raw.get("tracking", {}), "experiment_name": f"ucr-{name}"}
            if args.families:
                raw["families"] = args.families.split(",")
            params = parse_params(raw, f"params.yaml + {args.profile} (data.ucr.name={name})")
            meter = meter or EnergyMeter(params.energy).prewarm()
            prepared = prepare(params)
            save(prepared, params.data.dataset)
            card = prepared.card
            print(f"{name}: {card['num_samples']}, input {card['input_shape']}, {card['num_classes']} classes", flush=True)
            for family in params.families:
                t0 = time.perf_counter()
                trained = train_family(params, family, meter, prepared)
                acc = evaluate_family(params, family, "baseline", meter)["test_acc"]
                rows.append((name, family, acc, trained, time.perf_counter() - t0))
                print(f"  {family:12s} test acc {acc:.3f}  (val {trained['val_acc']:.3f}, {trained['epochs']} epochs, "
                      f"{trained['energy_j']:.0f} J training)", flush=True)
    finally:
        os.chdir(ROOT)
        if args.keep:
            print(f"workspace kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print("\n| problem | family | test accuracy | published [W] | published [F] | epochs | training energy |")
    print("|---|---|---|---|---|---|---|")
    for name, family, acc, trained, _ in rows:
        pub = {src: a for a, src in PUBLISHED.get(name, {}).get(family, ())}
        fmt = {k: f"{v:.3f}" if v is not None else "–" for k, v in (("W", pub.get("W")), ("F", pub.get("F")))}
        print(f"| {name} | {family} | {acc:.3f} | {fmt['W']} | {fmt['F']} | {trained['epochs']} | "
              f"{trained['energy_j']:.0f} J ({trained['energy_method']}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

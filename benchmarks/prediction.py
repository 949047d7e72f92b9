"""How well a training run predicts its own total energy: the run's prediction after 1, 2 and 3
epochs (``pipeline.prediction``) against carbontracker's linear rule (first epoch x max_epochs),
on the same runs.

    python benchmarks/prediction.py [--families mlp cnn rnn transformer] [--widths 0.5 1 2]
                                    [--lrs 0.001 0.01] [--dataset mnist1d] [--epochs 30] [--patience 8]

Trains every family x width factor (the size sweep's scaling of the family) x learning rate, each
a real ``python -m pipeline train`` with the project's params otherwise (early stopping on, so
runs end at different epochs, as they do in use). Each run logs its predictions and their errors
against what it measured (``final/predicted_total_j_error_pct_after_<k>``,
``final/linear_rule_total_j_error_pct``); this script gathers them and prints the median absolute
percentage error of each, with its range, over all runs and per family. Goal (issue 18): median
error <= 15 % after 2 epochs, and below the linear rule's. Writes into a temporary directory;
nothing in the project changes.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _common import ROOT, pipeline_env

sys.path.insert(0, str(ROOT))
from pipeline.config import Params  # noqa: E402
from pipeline.models.family import get_family  # noqa: E402

AFTER = (1, 2, 3)


def mape(values: list[float]) -> str:
    errs = [abs(v) for v in values]
    if not errs:
        return "n/a"
    return f"{statistics.median(errs):5.1f} % [{min(errs):.1f}-{max(errs):.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn", "rnn", "transformer"])
    ap.add_argument("--widths", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    ap.add_argument("--lrs", nargs="+", type=float, default=[0.001, 0.01])
    ap.add_argument("--dataset", default=None, help="data.dataset (default: params.yaml's)")
    ap.add_argument("--epochs", type=int, default=None, help="train.max_epochs (default: params.yaml's)")
    ap.add_argument("--patience", type=int, default=None, help="train.early_stopping_patience (default: params.yaml's)")
    ap.add_argument("--histories", type=Path, default=None, help="copy each run's epoch history (CSV) into this folder")
    args = ap.parse_args()
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    if args.dataset:
        base["data"]["dataset"] = args.dataset
    for key, value in (("max_epochs", args.epochs), ("early_stopping_patience", args.patience)):
        if value is not None:
            base["train"][key] = value
    params = Params.model_validate(base)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        (case / "params.yaml").write_text(yaml.safe_dump(base))
        subprocess.run([sys.executable, "-m", "pipeline", "prepare"], cwd=case, check=True, capture_output=True,
                       env=pipeline_env())
        configs = [(f, w, lr) for f in args.families for w in args.widths for lr in args.lrs]
        for i, (family, width, lr) in enumerate(configs, 1):
            scaled = get_family(family).scale(params.models.for_family(family), width, 1.0)
            if scaled is None:
                print(f"[{i}/{len(configs)}] {family} x{width}: the family has no width to scale; skipped",
                      file=sys.stderr)
                continue
            raw = json.loads(json.dumps(base))
            raw["models"][family] = {**raw["models"].get(family, {}), **scaled.model_dump()}
            raw["train"]["lr"] = lr
            (case / "params.yaml").write_text(yaml.safe_dump(raw))
            out = subprocess.run([sys.executable, "-m", "pipeline", "train", "--family", family], cwd=case,
                                 env=pipeline_env(), capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"train {family} failed ({out.returncode}):\n{out.stderr[-2000:]}")
            m = json.loads((case / "metrics" / "train" / f"{family}.json").read_text())
            if args.histories:
                args.histories.mkdir(parents=True, exist_ok=True)
                shutil.copy(case / "plots" / "epochs" / f"{family}-baseline.csv",
                            args.histories / f"{family}-w{width:g}-lr{lr:g}.csv")
            runs.append({"family": family, **m})
            after = ", ".join(f"{k}: {m[f'predicted_total_j_error_pct_after_{k}']:+.1f} %" for k in AFTER
                              if f"predicted_total_j_error_pct_after_{k}" in m)
            print(f"[{i}/{len(configs)}] {family} width x{width} lr {lr}: {m['epochs']} epochs, {m['energy_j']:.1f} J; "
                  f"error after {after}; linear rule {m['linear_rule_total_j_error_pct']:+.1f} %",
                  file=sys.stderr, flush=True)
    train = params.train
    print(f"{len(runs)} runs ({', '.join(args.families)}; widths x{' x'.join(map(str, args.widths))}; "
          f"lr {', '.join(map(str, args.lrs))}) on {base['data']['dataset']}, max_epochs {train.max_epochs}, "
          f"early stopping patience {train.early_stopping_patience}; energy: CodeCarbon, {runs[0]['energy_method']}")
    print(f"epochs run: median {statistics.median(r['epochs'] for r in runs):.0f} "
          f"[{min(r['epochs'] for r in runs)}-{max(r['epochs'] for r in runs)}]")
    print("median absolute error of the predicted total energy [range]:")
    groups = [("all", runs)] + [(f, [r for r in runs if r["family"] == f]) for f in args.families]
    for name, rs in groups:
        if not rs:
            continue
        cells = [f"after {k}: {mape([r[key] for r in rs if key in r])}"
                 for k in AFTER for key in [f"predicted_total_j_error_pct_after_{k}"]]
        print(f"  {name:12s} n={len(rs):2d}  {';  '.join(cells)};  "
              f"linear rule: {mape([r['linear_rule_total_j_error_pct'] for r in rs])}")


if __name__ == "__main__":
    main()

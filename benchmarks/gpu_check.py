"""The GPU check: the same short trainings on one GPU measured by each energy backend, side by
side, with the GPU's model and driver; then the evaluate stage on the GPU.

    python benchmarks/gpu_check.py [--families mlp cnn] [--rounds 3] [--epochs 5] [--precision 32]

Each round trains every family once per backend (``energy.backend: codecarbon``, then ``zeus``,
the order reversed every other round), each a real ``python -m pipeline train`` on
``train.accelerator: gpu``, ``train.devices: 1``; after the last round, ``evaluate`` with
``evaluate.device: cuda`` under each backend. Prints, per backend and family, the median
[range] over rounds of the GPU's energy, the whole run's energy, its training time and the
method each run recorded. Needs a CUDA GPU and the zeus package (``make install``);
exits 2 naming what is missing otherwise. Writes into a temporary directory only.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from _common import ROOT, pipeline_env, summary

BACKENDS = ("codecarbon", "zeus")


def gpu_identity() -> str:
    import pynvml
    import torch

    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()
    return (f"{torch.cuda.get_device_name(0)} (driver {driver}, CUDA {torch.version.cuda}, torch {torch.__version__}, "
            f"{torch.cuda.device_count()} GPU(s) visible)")


def run(case: Path, backend: str, *args: str) -> None:
    raw = yaml.safe_load((case / "params.yaml").read_text())
    raw["energy"]["backend"] = backend
    (case / "params.yaml").write_text(yaml.safe_dump(raw))
    out = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=case, env=pipeline_env(), capture_output=True,
                         text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(args)} ({backend}) failed ({out.returncode}):\n{out.stderr[-3000:]}")



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--precision", default="32", choices=["32", "16-mixed", "bf16-mixed"])
    args = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: torch {torch.__version__} sees no CUDA GPU here (CUDA build: {torch.version.cuda or 'none'}); "
              "this check needs one", file=sys.stderr)
        return 2
    if importlib.util.find_spec("zeus") is None:
        print("gpu_check: the zeus package is missing: make install", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        case = Path(tmp)
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        raw["train"].update({"max_epochs": args.epochs, "early_stopping_patience": 0, "accelerator": "gpu",
                             "devices": 1, "precision": args.precision})
        raw["evaluate"]["device"] = "cuda"
        (case / "params.yaml").write_text(yaml.safe_dump(raw))
        run(case, "codecarbon", "prepare")
        runs: dict[str, dict[str, list[dict]]] = {b: {f: [] for f in args.families} for b in BACKENDS}
        evals: dict[str, dict[str, dict]] = {b: {} for b in BACKENDS}
        for r in range(args.rounds):
            for backend in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):  # drift hits both alike
                for f in args.families:
                    run(case, backend, "train", "--family", f)
                    runs[backend][f].append(json.loads((case / "metrics" / "train" / f"{f}.json").read_text()))
                print(f"round {r + 1} {backend}: done", file=sys.stderr, flush=True)
        for backend in BACKENDS:
            for f in args.families:
                run(case, backend, "evaluate", "--family", f)
                evals[backend][f] = json.loads((case / "metrics" / "evaluate" / f"{f}-baseline.json").read_text())
    print(f"GPU: {gpu_identity()}")
    print(f"{len(args.families)} trainings ({', '.join(args.families)}; {args.epochs} epochs, precision {args.precision}, "
          f"default params), {args.rounds} rounds per backend, alternating; median [range]")
    for backend in BACKENDS:
        print(f"\nenergy.backend: {backend}")
        for f in args.families:
            ms = runs[backend][f]
            gpu = [m["gpu_kwh"] * 3.6e6 for m in ms if m.get("gpu_kwh") is not None]
            print(f"  {f:12s} GPU {summary(gpu, 'J')}, whole run {summary([m['energy_j'] for m in ms if 'energy_j' in m], 'J')}, "
                  f"training {summary([m['duration_s'] for m in ms], 's')}, val/acc {summary([m['val_acc'] for m in ms], '', 3)}")
            print(f"  {'':12s} method {ms[0].get('energy_method')}")
            e = evals[backend][f]
            print(f"  {'':12s} evaluate on {e.get('inference_device')}: {e.get('energy_per_1k_j', float('nan')):.4f} J per "
                  f"1,000 predictions, test/acc {e['test_acc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

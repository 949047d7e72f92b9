"""Cost of the pipeline's training path against a bare PyTorch loop doing the same work.

For each family: the same model, optimizer, batches (in-memory slices), epochs and per-epoch
validation pass, trained (a) through ``train_family`` (Lightning + MLflow + CodeCarbon + FLOP
profiling + checkpoints + artifacts) and (b) by a hand-written loop. Each is timed at two epoch
counts; the difference between the paths is fitted as ``per_run_s + per_step_ms * steps``.

    python benchmarks/training_overhead.py [--epochs 2 6] [--repeats 3] [--families mlp cnn rnn transformer]

Writes into a temporary directory (its own MLflow store); nothing in the project changes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_params  # noqa: E402
from pipeline.data.prepare import prepare  # noqa: E402
from pipeline.energy import EnergyMeter  # noqa: E402
from pipeline.models.factory import build_model  # noqa: E402
from pipeline.training.data import TensorBatches, split_tensors  # noqa: E402
from pipeline.training.module import build_optimizer  # noqa: E402
from pipeline.training.train import model_spec, train_family  # noqa: E402


def bare_loop(params, family, prepared, epochs: int) -> tuple[float, int]:
    """Hand-written training: same model, batches, optimizer and per-epoch validation."""
    t0 = time.perf_counter()
    torch.manual_seed(params.base.seed)
    model = build_model(model_spec(params, family, prepared))
    opt = build_optimizer(model.parameters(), params.train)
    train = TensorBatches(*split_tensors(prepared, "train"), params.train.batch_size, shuffle=True, seed=params.base.seed)
    val = TensorBatches(*split_tensors(prepared, "val"), params.evaluate.batch_size, shuffle=False)
    steps = 0
    for _ in range(epochs):
        model.train()
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            steps += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in val:
                correct += int((model(x).argmax(1) == y).sum())
    return time.perf_counter() - t0, steps


def pipeline_path(params, family, prepared, epochs: int, meter) -> tuple[float, int]:
    p = params.model_copy(update={"train": params.train.model_copy(
        update={"max_epochs": epochs, "early_stopping_patience": 0})})
    t0 = time.perf_counter()
    m = train_family(p, family, meter, prepared)
    return time.perf_counter() - t0, int(m["steps"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    ap.add_argument("--epochs", type=int, nargs=2, default=[2, 6])
    ap.add_argument("--repeats", type=int, default=3, help="median of this many alternated timings")
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn", "rnn", "transformer"])
    args = ap.parse_args()

    params = load_params(args.params)
    prepared = prepare(params)
    work = Path(tempfile.mkdtemp(prefix="overhead-bench-"))
    os.chdir(work)
    for var in ("DVC_ROOT", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    t0 = time.perf_counter()
    meter = EnergyMeter(params.energy)
    meter._wait_ready()
    print(f"CodeCarbon hardware probe (once per process, overlapped with imports in the CLI): "
          f"{time.perf_counter() - t0:.2f} s")
    t0 = time.perf_counter()
    pipeline_path(params, "mlp", prepared, 1, meter)  # cold: MLflow store creation, first Trainer
    print(f"cold first pipeline run of 1 MLP epoch (store creation, first Trainer): {time.perf_counter() - t0:.2f} s\n")

    head = (f"{'family':12} {'steps':>6} {'bare s':>8} {'pipeline s':>11} {'ratio':>6} "
            f"{'overhead/step ms':>17} {'overhead/run s':>15}")
    print(head)
    print("-" * len(head))
    for family in args.families:
        # Warm up both paths on this family first: the first runs in a process are markedly
        # slower (allocator, oneDNN primitive caches), which would be charged to whichever ran first.
        for _ in range(2):
            bare_loop(params, family, prepared, args.epochs[0])
            pipeline_path(params, family, prepared, args.epochs[0], meter)
        res = {}
        for epochs in args.epochs:
            # Alternate the two paths so that drifts in machine speed hit both alike.
            bare_t, pipe_t = [], []
            for _ in range(args.repeats):
                t, steps = bare_loop(params, family, prepared, epochs)
                bare_t.append(t)
                t, pipe_steps = pipeline_path(params, family, prepared, epochs, meter)
                pipe_t.append(t)
                assert steps == pipe_steps, (steps, pipe_steps)
            res[epochs] = (statistics.median(bare_t), statistics.median(pipe_t), steps)
        (b1, p1, s1), (b2, p2, s2) = res[args.epochs[0]], res[args.epochs[1]]
        d1, d2 = p1 - b1, p2 - b2
        per_step = (d2 - d1) / (s2 - s1)
        per_run = d1 - per_step * s1
        print(f"{family:12} {s2:6d} {b2:8.2f} {p2:11.2f} {p2 / b2:6.3f} {per_step * 1e3:17.3f} {per_run:15.2f}")
    print(f"\n(ratio and times at {args.epochs[1]} epochs; per-step and per-run overhead fitted from "
          f"{args.epochs[0]} and {args.epochs[1]} epochs; medians of {args.repeats} alternated runs)")


if __name__ == "__main__":
    main()

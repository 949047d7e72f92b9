"""Cost of the pipeline's training path against a bare PyTorch loop doing the same work.

For each family: the same model, optimizer, batches (in-memory slices), epochs and per-epoch
validation pass, trained (a) through ``train_family`` (Lightning + MLflow + CodeCarbon + FLOP
profiling + checkpoints + artifacts), (b) by a hand-written loop and (c) by Lightning's fit of the
pipeline's own module and data path with nothing else around it (the *Lightning floor*: what any
Lightning-driven training of this work costs). Each is timed at one epoch count, alternated; it
prints the ratios of the measured training loop to the bare loop and to the floor, the floor's to
the bare loop, and the whole training path's (the MLflow run and the model's export around the
loop) to the bare loop.

    python benchmarks/training_overhead.py [--epochs 6] [--repeats 5] [--families mlp cnn rnn transformer] [--parts]

``--parts`` also prints, per family, the seconds per run of the loop's parts (the module's training
and validation steps, the epoch-end recording, the checkpoint, and the rest of Lightning's fit),
timed by perf counters wrapped around those methods.

Writes into a temporary directory (its own MLflow store); nothing in the project changes.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import quartiles  # noqa: E402
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


def lightning_floor(params, family, prepared, epochs: int) -> float:
    """Wall time of Lightning's fit of the pipeline's own module and data path (``Classifier``,
    ``PreparedDataModule``: manual optimization, in-memory batches, one loader item per epoch) on
    the same work, with nothing of the pipeline around it: no energy meter, callbacks, checkpoint,
    logger or progress bar. The least a Lightning-driven training of this work costs."""
    import lightning.pytorch as pl

    from pipeline.training.data import PreparedDataModule
    from pipeline.training.module import Classifier
    from pipeline.training.train import quiet_lightning, torch_flags_restored

    quiet_lightning()
    t0 = time.perf_counter()
    torch.manual_seed(params.base.seed)
    module = Classifier(build_model(model_spec(params, family, prepared)), prepared.card["num_classes"], params.train)
    data = PreparedDataModule(prepared, params.train.batch_size, params.base.seed, params.evaluate.batch_size)
    with tempfile.TemporaryDirectory() as root, torch_flags_restored():
        trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[],
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             num_sanity_val_steps=0, deterministic="warn", default_root_dir=root)
        trainer.fit(module, datamodule=data)
    return time.perf_counter() - t0


def pipeline_path(params, family, prepared, epochs: int, meter) -> tuple[float, float, int]:
    """(wall time of the whole train stage's work, the measured training block, optimizer steps)."""
    p = params.model_copy(update={"train": params.train.model_copy(
        update={"max_epochs": epochs, "early_stopping_patience": 0})})
    t0 = time.perf_counter()
    m = train_family(p, family, meter, prepared)
    return time.perf_counter() - t0, float(m["duration_s"]), int(m["steps"])


# With --parts, the parts of the training loop timed by perf counters around these methods.
PARTS = (
    ("training steps", "pipeline.training.module:Classifier", "training_step"),
    ("validation steps", "pipeline.training.module:Classifier", "validation_step"),
    ("validation end", "pipeline.training.module:Classifier", "on_validation_epoch_end"),
    ("epoch-end recording", "pipeline.training.callbacks:EpochRecorder", "on_train_epoch_end"),
    ("checkpoint", "lightning.pytorch.callbacks:ModelCheckpoint", "on_train_epoch_end"),
    ("checkpoint", "lightning.pytorch.callbacks:ModelCheckpoint", "on_validation_end"),
    ("Lightning fit", "lightning.pytorch:Trainer", "fit"),
)


def time_parts() -> dict[str, float]:
    """Wrap the methods of PARTS with perf counters; returns the dict their seconds add up in."""
    import importlib

    spent: dict[str, float] = collections.defaultdict(float)
    for name, where, attr in PARTS:
        module, cls_name = where.split(":")
        cls = getattr(importlib.import_module(module), cls_name)
        inner = getattr(cls, attr)

        def timed(*args, _inner=inner, _name=name, **kwargs):
            t0 = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent[_name] += time.perf_counter() - t0

        setattr(cls, attr, timed)
    return spent


def spread(values: list[float]) -> str:
    """``median [first quartile-third quartile]``."""
    q1, median, q3 = quartiles(values)
    return f"{median:.2f} [{q1:.2f}-{q3:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5, help="alternated pairs of timings per family")
    ap.add_argument("--families", nargs="+", default=["mlp", "cnn", "rnn", "transformer"])
    ap.add_argument("--parts", action="store_true",
                    help="also time the parts of the training loop (perf counters around its methods)")
    args = ap.parse_args()
    spent = time_parts() if args.parts else None

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

    head = (f"{'family':12} {'steps':>5} {'bare loop s':>18} {'Lightning floor s':>18} {'floor / bare':>18} "
            f"{'training loop s':>18} {'loop / bare':>18} {'loop / floor':>18} {'whole / bare':>18} {'per run s':>18}")
    print(head)
    print("-" * len(head))
    for family in args.families:
        # Warm up both paths on this family first: the first runs in a process are markedly
        # slower (allocator, oneDNN primitive caches), which would be charged to whichever ran first.
        for _ in range(2):
            bare_loop(params, family, prepared, 1)
            lightning_floor(params, family, prepared, 1)
            pipeline_path(params, family, prepared, 1, meter)
        bare, floor, loop, whole = [], [], [], []
        parts: dict[str, list[float]] = collections.defaultdict(list)
        for _ in range(args.repeats):  # alternated, so that drifts in machine speed hit both alike
            t, steps = bare_loop(params, family, prepared, args.epochs)
            bare.append(t)
            floor.append(lightning_floor(params, family, prepared, args.epochs))
            if spent is not None:
                spent.clear()
            t, measured, pipe_steps = pipeline_path(params, family, prepared, args.epochs, meter)
            for name, seconds in (spent or {}).items():
                parts[name].append(seconds)
            assert steps == pipe_steps, (steps, pipe_steps)
            loop.append(measured)
            whole.append(t)
        def ratio(a: list[float], b: list[float]) -> str:
            return spread([x / y for x, y in zip(a, b, strict=True)])

        per_run = [a - b for a, b in zip(whole, loop, strict=True)]
        print(f"{family:12} {steps:5d} {spread(bare):>18} {spread(floor):>18} {ratio(floor, bare):>18} "
              f"{spread(loop):>18} {ratio(loop, bare):>18} {ratio(loop, floor):>18} {ratio(whole, bare):>18} "
              f"{spread(per_run):>18}")
        if parts:
            inside = [f - sum(parts[n][i] for n in parts if n != "Lightning fit")
                      for i, f in enumerate(parts["Lightning fit"])]
            print(f"{'':12} per run, s: " + ", ".join(f"{n} {spread(v)}" for n, v in parts.items())
                  + f", rest of Lightning fit {spread(inside)}")
    print(f"\n{args.epochs} epochs; median [quartiles] of {args.repeats} alternated runs, ratios taken per "
          "round. Lightning floor: Lightning's fit of the pipeline's module and data path alone (no meter, "
          "callbacks, checkpoint or logger). training loop: the block the pipeline measures (Lightning's fit: "
          "every step, the per-epoch validation, energy reading, MLflow logging and checkpoint); whole path: "
          "train_family (plus the MLflow run, FLOP profile, model export and artifacts); per run: whole path less "
          "training loop.")


if __name__ == "__main__":
    main()

"""The ``train`` stage: fit one family on the prepared data, measured and tracked.

``train_family`` does the work and returns its metrics, so the CLI, a search and the tests all
call the same function.
"""
from __future__ import annotations

import csv
import json
import logging
import resource
import sys
import warnings
from pathlib import Path

import torch

from pipeline import paths
from pipeline.config import Params
from pipeline.data.prepare import Prepared, load_prepared
from pipeline.energy import EnergyMeter
from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.profile import profile_model
from pipeline.tracking import base_tags, tracked_run

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Known and harmless here: in-memory iterables have no workers; no logger is configured.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*You called `self.log.*")
    warnings.filterwarnings("ignore", message=".*`isinstance.*treespec.*")
    # models/<family>/ also holds the exported weights next to the checkpoint.
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")


def peak_memory() -> dict[str, int]:
    """Process peak resident memory (bytes); on CUDA also the peak of torch's allocator."""
    out = {"peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}
    if torch.cuda.is_available():
        out["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def write_history(history: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "epoch", k))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def model_spec(params: Params, family: str, prepared: Prepared) -> ModelSpec:
    card = prepared.card
    return ModelSpec(family, tuple(card["input_shape"]), card["num_classes"],
                     params.models.for_family(family).model_dump())


def train_family(params: Params, family: str, meter: EnergyMeter | None = None,
                 prepared: Prepared | None = None) -> dict:
    """Train ``family``; write models/<family>/, metrics and the epoch history; return metrics."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from pipeline.training.callbacks import EpochRecorder
    from pipeline.training.data import PreparedDataModule
    from pipeline.training.module import Classifier

    quiet_lightning()
    meter = (meter or EnergyMeter(params.energy)).prewarm()
    prepared = prepared or load_prepared(params.data.dataset)
    cfg = params.train
    pl.seed_everything(params.base.seed, workers=True, verbose=False)
    spec = model_spec(params, family, prepared)
    model = build_model(spec)
    profile = profile_model(model, spec.input_shape, spec.num_classes, cfg.batch_size)
    pl.seed_everything(params.base.seed, workers=True, verbose=False)  # profiling drew random inputs
    model = build_model(spec)
    module = Classifier(model, spec.num_classes, cfg)
    datamodule = PreparedDataModule(prepared, cfg.batch_size, params.base.seed, params.evaluate.batch_size)

    out_dir = paths.model_dir(family)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("best*.ckpt"):
        old.unlink()
    card = prepared.card
    tags = base_tags("train", family, card["sha256"])
    tags["energy_method"] = "pending"
    run_name = f"train-{family}"
    with tracked_run(params.tracking, run_name, tags) as run:
        run.log_params({
            "family": family,
            "model": spec.hparams,
            "train": cfg.model_dump(),
            "data": {"dataset": card["dataset"], "input_shape": card["input_shape"],
                     "num_classes": card["num_classes"], "num_train": card["num_samples"]["train"]},
            "seed": params.base.seed,
            "energy.country_iso_code": params.energy.country_iso_code,
        })
        run.log_metrics({
            "model/params_total": profile.params_total,
            "model/param_bytes": profile.param_bytes,
            **({"model/flops_per_sample_inference": profile.flops_per_sample_inference,
                "model/flops_per_train_step": profile.flops_per_train_step}
               if profile.flops_per_train_step is not None else {}),
        })
        run.set_tags({"flops_note": profile.flops_note})

        tty = sys.stderr.isatty()
        ckpt = ModelCheckpoint(dirpath=out_dir, filename="best", monitor="val/acc", mode="max",
                               save_top_k=1, save_weights_only=True, enable_version_counter=False)
        callbacks = [ckpt]
        if cfg.early_stopping_patience > 0:
            callbacks.append(EarlyStopping(monitor="val/acc", mode="max", patience=cfg.early_stopping_patience))
        with meter.measure() as measurement:
            run.set_tags({"energy_method": meter.method})
            recorder = EpochRecorder(measurement, run, cfg.target_val_acc)
            trainer = pl.Trainer(
                max_epochs=cfg.max_epochs,
                accelerator="auto",
                devices=1,
                logger=False,
                callbacks=[recorder, *callbacks],
                enable_progress_bar=tty,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                deterministic="warn",
                default_root_dir=str(out_dir),
            )
            try:
                trainer.fit(module, datamodule=datamodule)
            finally:
                # Whatever happened, the energy spent so far belongs to the run.
                partial = measurement.finish()
                run.log_metrics(partial.metrics("energy"))
        energy = measurement.total

        best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
        model = module.model.cpu()
        torch.save(model.state_dict(), out_dir / "model.pt")
        (out_dir / "spec.json").write_text(json.dumps(spec.to_dict(), indent=2) + "\n")

        epochs_run = len(recorder.history)
        n_train, n_val = card["num_samples"]["train"], card["num_samples"]["val"]
        metrics: dict[str, float | int | None] = {
            "val_acc": recorder.best_val_acc,
            "best_epoch": recorder.best_epoch,
            "epochs": epochs_run,
            "steps": trainer.global_step,
            "duration_s": energy.duration_s,
            "energy_j": energy.energy_j,
            "energy_kwh": energy.energy_kwh,
            "cpu_kwh": energy.cpu_kwh,
            "gpu_kwh": energy.gpu_kwh,
            "ram_kwh": energy.ram_kwh,
            "emissions_kg": energy.emissions_kg,
            "mean_power_w": energy.mean_power_w,
            "energy_method": energy.method,
            "params": profile.params_total,
            "param_bytes": profile.param_bytes,
            "flops_per_sample_inference": profile.flops_per_sample_inference,
            "flops_per_train_step": profile.flops_per_train_step,
            **peak_memory(),
        }
        if profile.flops_per_train_step is not None:
            # Work actually done: every training sample forward+backward, every val sample forward.
            per_train_sample = profile.flops_per_train_step / profile.train_batch_size
            total_flops = epochs_run * (per_train_sample * n_train + profile.flops_per_sample_inference * n_val)
            metrics["train_flops_total"] = total_flops
            if energy.energy_j:
                metrics["flops_per_joule"] = total_flops / energy.energy_j
        reached = recorder.target_reached
        metrics["target_val_acc"] = cfg.target_val_acc
        if reached is not None:
            metrics["epochs_to_target"] = reached["epoch"] + 1
            metrics["time_to_target_s"] = reached["time_s"]
            if reached["energy_j"] is not None:
                metrics["energy_to_target_j"] = reached["energy_j"]
        metrics = {k: v for k, v in metrics.items() if v is not None}

        run.log_metrics({f"final/{k}": v for k, v in metrics.items() if k != "energy_method"})
        run.log_metrics({"val/acc_best": recorder.best_val_acc})
        history_path = paths.epoch_plot(family)
        write_history(recorder.history, history_path)
        run_info = {"run_id": run.run_id, "family": family, "energy": energy.to_dict(),
                    "flops_note": profile.flops_note, "data_sha256": card["sha256"]}
        (out_dir / "run.json").write_text(json.dumps(run_info, indent=2) + "\n")
        for artifact in (ckpt.best_model_path, out_dir / "spec.json", history_path):
            run.log_artifact(artifact)
        run.log_dict(card, "data_card.json")
        run.log_dict(energy.to_dict(), "energy.json")

        metrics_path = paths.train_metrics(family)
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics

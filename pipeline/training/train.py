"""Training: ``fit`` trains one model, measured and recorded into an open MLflow run; the
``train`` stage (``train_family``) wraps it in its own run and writes the stage's outputs.

The search stage calls the same ``fit`` for every trial, so a trial is measured exactly like a
baseline training run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import resource
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from pipeline import interrupts, paths
from pipeline.compute import cpu_slot, resolve_devices, share_threads
from pipeline.config import Params, ParamsError, TrainCfg
from pipeline.data.prepare import Prepared, load_prepared
from pipeline.energy import EnergyMeter, EnergyReading
from pipeline.interrupts import reraise_interrupt
from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.profile import ModelProfile, profile_model
from pipeline.models.saved import MODEL, SPEC, read_spec, save_model
from pipeline.prediction import error_pct, errors, linear_rule
from pipeline.ranks import is_global_zero
from pipeline.tracking import NullRun, Run, base_tags, tracked_run
from pipeline.training.callbacks import EpochRecorder
from pipeline.training.data import PreparedDataModule
from pipeline.training.module import SCORE, Classifier
from pipeline.uncertainty import Spread

log = logging.getLogger(__name__)


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Known and harmless here: in-memory iterables have no workers; no logger is configured.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*You called `self.log.*")
    warnings.filterwarnings("ignore", message=".*`isinstance.*treespec.*")
    # DDP: the validation figures logged are torchmetrics results, already summed over the ranks.
    warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")
    # models/<family>/<variant>/ also holds the exported weights next to the checkpoint.
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")


@contextmanager
def torch_flags_restored() -> Iterator[None]:
    """Give back torch's global determinism flag after training. ``Trainer(deterministic="warn")``
    switches it on for the whole process; left on, every later int8 inference in the process
    (the compress stage measures after fine-tuning) prints a warning per call and slows down."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


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


def model_spec(params: Params, family: str, prepared: Prepared, hparams: dict | None = None) -> ModelSpec:
    card = prepared.card
    return ModelSpec(family, tuple(card["input_shape"]), card["num_classes"],
                     hparams if hparams is not None else params.models.for_family(family).model_dump())


@dataclass
class FitResult:
    """What ``fit`` measured. ``energy`` is set even when training raised (pruned, NaN, Ctrl-C)."""

    energy: EnergyReading | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    spec: ModelSpec | None = None
    profile: ModelProfile | None = None
    best_checkpoint: str = ""
    compute: dict[str, Any] = field(default_factory=dict)  # where it trained (Devices.record())


def fit(params: Params, family: str, prepared: Prepared, meter: EnergyMeter, run: Run, out_dir: Path, *,
        train_cfg: TrainCfg | None = None, hparams: dict | None = None,
        extra_callbacks: Sequence = (), result: FitResult | None = None, distributed: bool = False) -> FitResult:
    """Train one model into ``out_dir`` (best.ckpt, model.pt, spec.json) and log it to ``run``.

    ``train_cfg`` and ``hparams`` override params.train and params.models.<family> (a trial's
    choices). Pass ``result`` to read the energy spent when this raises. ``distributed``: train
    on every device ``train.devices`` names, one process each (DDP: Lightning starts the other
    ranks by running this command again; they compute and measure, rank 0 logs and writes);
    otherwise on one device of that kind.
    """
    quiet_lightning()
    result = result if result is not None else FitResult()
    cfg = train_cfg or params.train
    card = prepared.card
    devices = resolve_devices(cfg)
    if not distributed:
        devices = devices.single()
    pl.seed_everything(params.base.seed, workers=True, verbose=False)
    spec = model_spec(params, family, prepared, hparams)
    profile = profile_model(build_model(spec), spec.input_shape, spec.num_classes, cfg.batch_size)
    pl.seed_everything(params.base.seed, workers=True, verbose=False)  # profiling drew random inputs
    module = Classifier(build_model(spec), spec.num_classes, cfg)
    datamodule = PreparedDataModule(prepared, cfg.batch_size, params.base.seed, params.evaluate.batch_size)
    result.spec, result.profile = spec, profile

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("best*.ckpt") if is_global_zero() else ():  # rank 0 owns the outputs
        old.unlink()
    ckpt = ModelCheckpoint(dirpath=out_dir, filename="best", monitor=SCORE, mode="max",
                           save_top_k=1, save_weights_only=True, enable_version_counter=False)
    callbacks = [ckpt, *extra_callbacks]
    if cfg.early_stopping_patience > 0:
        callbacks.append(EarlyStopping(monitor=SCORE, mode="max", patience=cfg.early_stopping_patience))
    with cpu_slot():  # counted among the processes computing here while it trains
        threads, threads_why = share_threads(cfg.threads, beside=devices.processes_per_node)
        result.compute = {**devices.record(), "threads": threads}
        run.log(  # one store write: what the run trains, where, and how it is measured
            params={
                "family": family,
                "model": spec.hparams,
                "train": cfg.model_dump(),
                "data": {"dataset": card["dataset"], "input_shape": card["input_shape"],
                         "num_classes": card["num_classes"], "num_train": card["num_samples"]["train"]},
                "seed": params.base.seed,
                "energy.country_iso_code": params.energy.country_iso_code,
                "compute": result.compute,
            },
            metrics={
                "model/params_total": profile.params_total,
                "model/param_bytes": profile.param_bytes,
                "model/flops_per_sample_inference": profile.flops_per_sample_inference,
                "model/flops_per_train_step": profile.flops_per_train_step,
            },
            tags={"flops_note": profile.flops_note, "threads_policy": threads_why, **meter.tags()},
        )
        with meter.measure() as measurement, torch_flags_restored():
            recorder = EpochRecorder(measurement, run, cfg.target_val_acc, threads=cfg.threads,
                                     max_epochs=cfg.max_epochs, patience=cfg.early_stopping_patience,
                                     val_samples=card["num_samples"]["val"])
            trainer = pl.Trainer(
                max_epochs=cfg.max_epochs,
                **devices.trainer_kwargs(),
                logger=False,
                callbacks=[recorder, *callbacks],
                enable_progress_bar=sys.stderr.isatty(),
                enable_model_summary=False,
                num_sanity_val_steps=0,
                deterministic="warn",
                default_root_dir=str(out_dir),
            )
            trained = False
            try:
                try:
                    trainer.fit(module, datamodule=datamodule)
                except SystemExit as exit_:
                    reraise_interrupt(trainer, exit_)
                trained = True
            finally:
                # Whatever happened, the energy spent so far belongs to the run.
                measurement.finish()
                if trained and devices.world_size > 1:  # every rank is here: its last segment too
                    measurement.replace_last(recorder.ranks.combine(measurement.segments[-1]))
                result.energy = measurement.total
                result.history = recorder.history
                run.log_metrics(result.energy.metrics("energy"))
                if devices.world_size > 1:
                    run.log_metrics({"energy/processes": devices.world_size, **recorder.ranks.metrics()})
                    run.set_tags({"energy_summed": (
                        f"{devices.world_size} processes (DDP ranks), each measured by its own CodeCarbon tracker "
                        "(process mode); summed over ranks at every epoch end and after training, duration the "
                        "slowest rank's" + ("" if trained else "; the epoch that was interrupted: rank 0 only"))})
    energy = result.energy
    if not is_global_zero():  # the other ranks measured and computed; rank 0 writes the model
        return result

    if ckpt.best_model_path:
        best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
        result.best_checkpoint = ckpt.best_model_path
    else:  # val/acc never gave a finite value to compare: keep the last weights, say so
        log.warning("%s: no best checkpoint was saved (val/acc never finite); exporting the last weights", family)
    save_model(out_dir, module.model.cpu(), spec)

    epochs_run = len(recorder.history)
    n_train, n_val = card["num_samples"]["train"], card["num_samples"]["val"]
    metrics: dict[str, Any] = {
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
        **{f"gpu{i}_j": j for i, j in (energy.gpu_j_by_device or {}).items()},
        "emissions_kg": energy.emissions_kg,
        "mean_power_w": energy.mean_power_w,
        "energy_method": energy.method,
        "energy_processes": devices.world_size,
        "others_cores": energy.others_cores,  # other work beside the run (pipeline.fingerprint)
        "threads": threads,
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
    metrics.update(prediction_summary(recorder, run, energy, metrics.get("energy_to_target_j"), cfg.max_epochs))
    result.metrics = {k: v for k, v in metrics.items() if v is not None}
    # The run's columns stay few: what it logged already under another key (energy/*, model/*) is
    # not logged again; the whole summary is the stage's metrics file and the run's summary.json.
    run.log_metrics({f"final/{k}": v for k, v in result.metrics.items() if k not in LOGGED_ELSEWHERE})
    run.log_dict(result.metrics, "summary.json")
    run.log_metrics({"val/acc_best": recorder.max_val_acc})
    return result


# Summary figures the run already holds under another key (energy/*, model/*, threads): not
# logged again as final/*.
LOGGED_ELSEWHERE = frozenset({
    "energy_method", "duration_s", "energy_kwh", "cpu_kwh", "gpu_kwh", "ram_kwh", "emissions_kg", "mean_power_w",
    "others_cores", "threads", "params", "param_bytes", "flops_per_sample_inference", "flops_per_train_step"})
PREDICTION_EPOCHS = (1, 2, 3)  # the run's summary keeps the errors of the predictions after these epochs


def prediction_summary(recorder: EpochRecorder, run: Run, energy: EnergyReading, to_target_j: float | None,
                       max_epochs: int) -> dict[str, float | None]:
    """Log the error of what the run predicted after each epoch against what it measured (step
    metrics ``*_error_pct``), and return the errors after the first epochs with the linear rule's
    (first epoch x max_epochs) on the same run, for its summary."""
    errs = errors(recorder.forecasts, energy.energy_j, energy.duration_s, to_target_j)
    run.log_steps({f.after - 1: e for f, e in zip(recorder.forecasts, errs, strict=True)})
    out: dict[str, float | None] = {
        f"predicted_total_j_error_pct_after_{k}": errs[k - 1].get("energy/predicted_total_error_pct")
        for k in PREDICTION_EPOCHS if k <= len(errs)}
    out["linear_rule_total_j_error_pct"] = error_pct(linear_rule(recorder.epochs, max_epochs), energy.energy_j)
    return out


def export_run(result: FitResult, run: Run, family: str, variant: str, card: dict, extra: dict | None = None) -> None:
    """Write a stage's view of a fit: epoch history, run.json, artifacts (checkpoint, spec, card,
    energy record) in the run, and the model as the run's MLflow logged model."""
    out_dir = paths.model_dir(family, variant)
    history_path = paths.epoch_plot(family, variant)
    write_history(result.history, history_path)
    model_id = run.log_model([out_dir / MODEL, out_dir / SPEC], f"{family}-{variant}", family,
                             {"family": family, "variant": variant}, read_spec(out_dir).hparams)
    run.log_model_figures(model_id, {f"final/{k}": v for k, v in result.metrics.items()})
    run_info = {"run_id": run.run_id, "model_id": model_id, "family": family, "variant": variant,
                "energy": result.energy.to_dict(), "flops_note": result.profile.flops_note,
                "data_sha256": card["sha256"], "compute": result.compute, **(extra or {})}
    paths.write_json(run_info, out_dir / "run.json")
    for artifact in (result.best_checkpoint, out_dir / SPEC, history_path):
        if artifact:
            run.log_artifact(artifact)
    run.log_dict(card, "data_card.json")
    run.log_dict(result.energy.to_dict(), "energy.json")


write_metrics = paths.write_json  # the stages' name for the one JSON writer (tune, sweep)


def config_key(family: str, spec: ModelSpec, cfg: TrainCfg, card: dict) -> str:
    """What makes two trainings repeats of one configuration: the family, the model's
    hyperparameters, the training params (threads aside) and the data; not the seed."""
    what = {"family": family, "model": spec.hparams, "train": cfg.model_dump(mode="json", exclude={"threads"}),
            "data": card.get("sha256", "unknown"), "input_shape": list(spec.input_shape), "classes": spec.num_classes}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def repeats_summary(seeds: list[int], results: list[FitResult]) -> dict:
    """Mean, sample sd, 95 % interval and CV of the repeats' validation accuracy, energy and time."""
    out: dict[str, Any] = {"n": len(results), "seeds": seeds}
    for name in ("val_acc", "energy_j", "duration_s", "epochs"):
        spread = Spread.of([r.metrics.get(name) for r in results])
        if spread is not None:
            out[name] = spread.summary()
    return out


def train_family(params: Params, family: str, meter: EnergyMeter | None = None,
                 prepared: Prepared | None = None) -> dict:
    """The train stage: fit the baseline of ``family`` (``base.repeats`` times, seeds ``base.seed``
    onwards, the first one kept); write models/<family>/baseline/, its metrics file and epoch
    history; return the metrics."""
    meter = (meter or EnergyMeter(params.energy)).prewarm()
    prepared = prepared or load_prepared(params.data.dataset)
    card = prepared.card
    spec = model_spec(params, family, prepared)
    build_model(spec)  # a family that cannot build fails before any run opens
    devices = resolve_devices(params.train)  # nor can a device that is not there
    repeats = params.base.repeats
    if repeats > 1 and devices.world_size > 1:
        raise ParamsError(f"base.repeats: {repeats} repeats of a DDP training (train.devices: {params.train.devices}) "
                          "are not supported: set base.repeats: 1, or repeat the stage with other seeds "
                          "(dvc exp run -S base.seed=...)")
    if not is_global_zero():  # a DDP rank started by rank 0: computes and measures, logs nothing
        interrupts.defer()
        return fit(params, family, prepared, meter, NullRun(), paths.model_dir(family), distributed=True).metrics
    key = config_key(family, spec, params.train, card)
    tags = {**base_tags("train", family, card), "variant": paths.BASELINE, "energy_method": "pending",
            "config_key": key}
    with tracked_run(params.tracking, f"train-{family}", tags) as run:
        result = fit(params, family, prepared, meter, run, paths.model_dir(family), distributed=True)
        export_run(result, run, family, paths.BASELINE, card)
        metrics = dict(result.metrics)
        if repeats > 1:
            seeds = [params.base.seed + i for i in range(repeats)]
            results = [result]
            for i, seed in enumerate(seeds[1:], 1):
                print(f"[{family}] repeat {i + 1}/{repeats} (seed {seed})", flush=True)
                seeded = params.model_copy(update={"base": params.base.model_copy(update={"seed": seed})})
                child_tags = {**tags, "repeat": str(i), "mlflow.parentRunId": run.run_id}
                with tempfile.TemporaryDirectory(prefix=f"repeat-{family}-") as tmp, \
                        tracked_run(params.tracking, f"train-{family}-seed{seed}", child_tags) as child:
                    results.append(fit(seeded, family, prepared, meter, child, Path(tmp)))
            metrics["repeats"] = repeats_summary(seeds, results)
            run.log_metrics({f"repeats/{name}_{stat}": v for name, block in metrics["repeats"].items()
                             if isinstance(block, dict) for stat, v in block.items()
                             if stat in ("mean", "sd", "ci95", "cv") and v is not None})
            run.log_metrics({"repeats/n": repeats})
        write_metrics(metrics, paths.train_metrics(family))
    return metrics

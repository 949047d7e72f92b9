"""Per-epoch recording: metrics, the epoch's energy and the run's predicted totals to MLflow,
energy-to-target, history."""
from __future__ import annotations

import lightning.pytorch as pl
import torch

from pipeline.compute import share_threads
from pipeline.energy import Measurement, RankEnergy
from pipeline.prediction import Epoch, Forecast, forecast
from pipeline.tracking import Run
from pipeline.training.module import SCORE


class EpochRecorder(pl.Callback):
    """At each epoch end: close the epoch's energy segment, log train/val metrics and the
    epoch's energy (J) and mean power (W) as step metrics, and note when val/acc first reaches
    the target (energy and time from the start of training). It also logs what the run predicts
    from its epochs so far (``pipeline.prediction``): total energy and time, energy to the target,
    epochs; the predictions are kept in ``forecasts``. In a distributed run every rank
    measures its own process and the epoch's energy is their sum. With ``threads: auto`` the
    torch threads are shared out again for the next epoch (other processes may have started or
    ended)."""

    def __init__(self, measurement: Measurement, run: Run | None, target_val_acc: float, threads: int | str = "auto",
                 *, max_epochs: int = 1, patience: int = 0, val_samples: int = 1):
        self.measurement = measurement
        self.plan = {"max_epochs": max_epochs, "patience": patience, "target": target_val_acc,
                     "val_samples": val_samples}
        self.epochs: list[Epoch] = []
        self.forecasts: list[Forecast] = []
        self.threads = threads
        self.ranks = RankEnergy()
        self.run = run
        self.target = target_val_acc
        self.history: list[dict[str, float]] = []
        # The kept checkpoint's epoch (best val/score) and its validation accuracy.
        self.best_score = float("-inf")
        self.best_val_acc = float("-inf")
        self.best_epoch = -1
        self.max_val_acc = float("-inf")
        self.target_reached: dict[str, float] | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        segment = self.measurement.lap()
        if trainer.world_size > 1:
            segment = self.ranks.combine(segment)
            self.measurement.replace_last(segment)
        so_far = self.measurement.total
        epoch = trainer.current_epoch
        row = {"epoch": epoch, **pl_module.compute_train_metrics(), **pl_module.last_val}
        val_acc, score = row.get("val/acc"), row.get(SCORE)
        if score is not None and score > self.best_score:
            self.best_score, self.best_val_acc, self.best_epoch = score, val_acc, epoch
        if val_acc is not None:
            self.max_val_acc = max(self.max_val_acc, val_acc)
        row["val/acc_best"] = self.max_val_acc
        if trainer.optimizers:  # the learning rate this epoch ran with (a scheduler steps after it)
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        row["time/epoch_s"] = segment.duration_s
        row["threads"] = torch.get_num_threads()  # what this epoch ran with; then shared out again
        share_threads(self.threads, beside=trainer.num_devices)
        row["time/elapsed_s"] = so_far.duration_s
        if segment.energy_j is not None:
            row["energy/epoch_j"] = segment.energy_j
            row["energy/epoch_mean_power_w"] = segment.mean_power_w
            row["energy/cumulative_j"] = so_far.energy_j
        if self.target_reached is None and val_acc is not None and val_acc >= self.target:
            self.target_reached = {"epoch": epoch, "time_s": so_far.duration_s, "energy_j": so_far.energy_j}
        self.epochs.append(Epoch(segment.energy_j, segment.duration_s, val_acc))
        self.forecasts.append(forecast(self.epochs, **self.plan))
        row.update(self.forecasts[-1].metrics())
        self.history.append(row)
        if self.run is not None:
            self.run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch, background=True)

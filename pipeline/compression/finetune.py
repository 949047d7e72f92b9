"""Short Lightning training runs for the compress stage: fine-tuning a pruned model, training a
student. Same LightningModule and in-memory batching as the train stage; no checkpoints on disk:
the weights of the best validation epoch are kept in memory and restored at the end."""
from __future__ import annotations

import copy
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pipeline import worktime
from pipeline.config import TrainCfg

if TYPE_CHECKING:
    from pipeline.training.data import Batches


class _KeepBest:
    """Lightning callback (built lazily): after each epoch, reset the module's train accumulators
    and keep a copy of the weights when val/acc improved."""

    def __new__(cls):
        import lightning.pytorch as pl

        class KeepBest(pl.Callback):
            def __init__(self):
                self.best_acc = float("-inf")
                self.best_state: dict | None = None
                self.history: list[dict] = []

            def on_train_epoch_end(self, trainer, pl_module):
                row = {"epoch": trainer.current_epoch, **pl_module.compute_train_metrics(), **pl_module.last_val}
                self.history.append(row)
                acc = row.get("val/acc")
                if acc is not None and acc > self.best_acc:
                    self.best_acc = acc
                    self.best_state = copy.deepcopy(pl_module.state_dict())

        return KeepBest()


def train_cfg(lr: float, batch_size: int, epochs: int) -> TrainCfg:
    """The compress stage's own training settings (Adam; no early stopping: a fixed budget)."""
    return TrainCfg(optimizer="adam", lr=lr, batch_size=batch_size, max_epochs=epochs, early_stopping_patience=0)


def fit_module(module, train_batches: Batches, val_batches: Iterable, epochs: int, seed: int) -> list[dict]:
    """Train ``module`` (a ``Classifier``) for ``epochs``; restore its best-val/acc weights.
    Returns the per-epoch history (train/loss, train/acc, val/acc, val/loss)."""
    from pipeline.training.train import quiet_lightning, torch_flags_restored

    quiet_lightning()
    with worktime.counted(), torch_flags_restored():
        return _fit(module, train_batches, val_batches, epochs, seed)


def _fit(module, train_batches: Batches, val_batches: Iterable, epochs: int, seed: int) -> list[dict]:
    import lightning.pytorch as pl

    from pipeline.training.data import WholeEpochs

    pl.seed_everything(seed, workers=True, verbose=False)
    keep = _KeepBest()
    # CPU like the evaluation: the variants are measured where they will run.
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[keep],
        enable_checkpointing=False, enable_progress_bar=sys.stderr.isatty(), enable_model_summary=False,
        num_sanity_val_steps=0, deterministic="warn",
    )
    module.train()  # Lightning keeps each submodule's mode: a copy of an eval-mode model would train without dropout
    try:
        trainer.fit(module, train_dataloaders=WholeEpochs(train_batches), val_dataloaders=val_batches)
    except SystemExit as exit_:  # Lightning turns Ctrl-C / SIGTERM into an exit: give the interrupt back
        from pipeline.interrupts import reraise_interrupt

        reraise_interrupt(trainer, exit_)
    if keep.best_state is not None:
        module.load_state_dict(keep.best_state)
    module.eval()
    return keep.history

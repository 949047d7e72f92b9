"""One LightningModule for classification, whatever the model family."""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from pipeline.config import TrainCfg


def build_optimizer(params, cfg: TrainCfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd_momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: unknown optimizer {cfg.optimizer!r}")


class Classifier(pl.LightningModule):
    """Cross-entropy classifier. Metrics accumulate per step and are computed once per epoch
    (no per-step logging: on small models that overhead would dominate)."""

    def __init__(self, model: nn.Module, num_classes: int, cfg: TrainCfg):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.last_val: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.train_loss.update(loss.detach(), weight=len(y))
        self.train_acc.update(logits.detach(), y)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.val_loss.update(nn.functional.cross_entropy(logits, y), weight=len(y))
        self.val_acc.update(logits, y)

    def on_validation_epoch_end(self):
        acc, loss = self.val_acc.compute(), self.val_loss.compute()
        self.val_acc.reset(), self.val_loss.reset()
        # Logged once per epoch for early stopping, checkpointing and the progress bar.
        self.log_dict({"val/acc": acc, "val/loss": loss}, prog_bar=True, on_epoch=True, batch_size=1)
        self.last_val = {"val/acc": float(acc), "val/loss": float(loss)}

    def compute_train_metrics(self) -> dict[str, float]:
        """This epoch's train loss and accuracy; resets the accumulators. A NaN loss raises."""
        loss, acc = float(self.train_loss.compute()), float(self.train_acc.compute())
        self.train_loss.reset(), self.train_acc.reset()
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} in epoch {self.current_epoch}; "
                f"try a lower train.lr (now {self.cfg.lr})"
            )
        return {"train/loss": loss, "train/acc": acc}

    def configure_optimizers(self):
        return build_optimizer(self.model.parameters(), self.cfg)

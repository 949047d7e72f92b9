"""One LightningModule for classification, whatever the model family."""
from __future__ import annotations

import inspect
import math

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.functional.classification import multiclass_accuracy

from pipeline import interrupts
from pipeline.config import TrainCfg
from pipeline.errors import NonFiniteLoss
from pipeline.training.data import Batches


def build_optimizer(params, cfg: TrainCfg) -> torch.optim.Optimizer:
    """``train.optimizer``: a built-in name or ``{target, **keywords}`` (lr and weight_decay from
    ``train``, unless the keywords set them)."""
    opt = cfg.optimizer
    if isinstance(opt, dict):
        from pipeline.imports import resolve

        cls = resolve(opt["target"], "train.optimizer.target")
        kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay, **{k: v for k, v in opt.items() if k != "target"}}
        if "weight_decay" not in inspect.signature(cls).parameters:
            kwargs.pop("weight_decay")
        return cls(params, **kwargs)
    if opt == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt == "sgd_momentum":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if opt == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if opt == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer: unknown optimizer {opt!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainCfg):
    """``train.scheduler`` (``{target, **keywords}``) on ``optimizer``, or None."""
    if cfg.scheduler is None:
        return None
    from pipeline.imports import resolve

    cls = resolve(cfg.scheduler["target"], "train.scheduler.target")
    return cls(optimizer, **{k: v for k, v in cfg.scheduler.items() if k != "target"})


# What picks the kept checkpoint and stops training early: validation accuracy, ties broken by
# validation loss (see selection_score).
SCORE = "val/score"


def selection_score(acc: float, loss: float, n: int) -> float:
    """Validation accuracy with ties broken by loss: ``acc - (loss / (1 + loss)) / n`` lies in
    ((k - 1) / n, k / n] for k correct of n, so one more correct prediction always ranks higher,
    and at equal accuracy the lower loss does. A small validation split (tens of series, as an
    archive's train split leaves) reaches 100 % early and stays there; by accuracy alone the first
    such epoch would be kept and training stopped, however much the model still improves."""
    if not math.isfinite(loss):
        return acc - 1.0 / max(n, 1)
    return acc - (loss / (1.0 + loss)) / max(n, 1)


class Classifier(pl.LightningModule):
    """Cross-entropy classifier. Metrics are computed once per epoch, never logged per step:
    on small models per-step overhead dominates. A training step only keeps its detached loss
    and predictions (~10 us; a torchmetrics update per step costs ~250 us here); torchmetrics
    computes the epoch's accuracy from them in one call."""

    def __init__(self, model: nn.Module, num_classes: int, cfg: TrainCfg):
        super().__init__()
        # Manual optimization: one zero_grad/backward/step per batch without Lightning's closure
        # machinery, which costs ~0.3 ms per step on a 2-core CPU (benchmarks/training_overhead.py).
        self.automatic_optimization = False
        self.model = model
        self.cfg = cfg
        self.num_classes = num_classes
        self._losses: list[torch.Tensor] = []
        self._sizes: list[int] = []
        self._preds: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        # torchmetrics sums their states over the ranks of a distributed run when computed.
        self.val_loss = MeanMetric()
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_count = SumMetric()
        self.last_val: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, extra: list) -> torch.Tensor:
        """The training loss; subclasses (distillation) use the batch's extra tensors."""
        return nn.functional.cross_entropy(logits, y)

    def training_step(self, batch, batch_idx):
        """One mini-batch ``(x, y, *extra)``, or a whole epoch's (a ``Batches`` from ``WholeEpochs``)."""
        opt = self.optimizers()
        if isinstance(batch, Batches):
            for mini in batch:
                self.train_on(opt, [t.to(self.device, non_blocking=True) for t in mini])
        else:
            self.train_on(opt, batch)

    def train_on(self, opt, batch) -> None:
        """One optimizer step on one mini-batch; keeps its detached loss and predictions."""
        interrupts.check()
        x, y, *extra = batch
        opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.loss(logits, y, extra)
        if not torch.isfinite(loss):  # one scalar check per step (~µs on CPU); stops a diverged run at once
            raise NonFiniteLoss(f"training loss became {loss.item()} at epoch {self.current_epoch + 1}, "
                                f"step {self.global_step}: the run diverged; try a lower train.lr (now {self.cfg.lr})")
        self.manual_backward(loss)
        opt.step()
        self._losses.append(loss.detach())
        self._sizes.append(len(y))
        self._preds.append(logits.detach().argmax(1))
        self._targets.append(y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        self.val_loss.update(nn.functional.cross_entropy(logits, y), weight=len(y))
        self.val_acc.update(logits, y)
        self.val_count.update(len(y))

    def on_validation_epoch_end(self):
        acc, loss, count = self.val_acc.compute(), self.val_loss.compute(), int(self.val_count.compute())
        self.val_acc.reset(), self.val_loss.reset(), self.val_count.reset()
        score = selection_score(float(acc), float(loss), count)
        # Logged once per epoch for early stopping, checkpointing and the progress bar.
        self.log_dict({"val/acc": acc, "val/loss": loss, SCORE: score}, prog_bar=True, on_epoch=True, batch_size=1)
        self.last_val = {"val/acc": float(acc), "val/loss": float(loss), SCORE: score}

    def compute_train_metrics(self) -> dict[str, float]:
        """This epoch's train loss and accuracy; resets the accumulators. A NaN loss raises."""
        if not self._sizes:
            return {}
        sizes = torch.tensor(self._sizes, dtype=torch.float32, device=self._losses[0].device)
        loss_sum = (torch.stack(self._losses).float() * sizes).sum()
        preds, targets = torch.cat(self._preds), torch.cat(self._targets)
        self._losses, self._sizes, self._preds, self._targets = [], [], [], []
        if self.trainer.world_size > 1:
            # Each rank trained on its shard: the epoch's figures are over every rank's samples.
            hits = multiclass_accuracy(preds, targets, self.num_classes, average="micro") * len(targets)
            totals = self.trainer.strategy.reduce(torch.stack([loss_sum, sizes.sum(), hits.float()]),
                                                  reduce_op="sum")
            loss, acc = float(totals[0] / totals[1]), float(totals[2] / totals[1])
        else:
            loss = float(loss_sum / sizes.sum())
            acc = float(multiclass_accuracy(preds, targets, self.num_classes, average="micro"))
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"training loss became {loss} in epoch {self.current_epoch + 1}; "
                f"try a lower train.lr (now {self.cfg.lr})"
            )
        return {"train/loss": loss, "train/acc": acc}

    def on_train_epoch_end(self):
        # The scheduler steps once per epoch (manual optimization: Lightning leaves it to us);
        # ReduceLROnPlateau on the epoch's validation loss.
        sched = self.lr_schedulers()
        if sched is None:
            return
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if "val/loss" in self.last_val:
                sched.step(self.last_val["val/loss"])
        else:
            sched.step()

    def configure_optimizers(self):
        opt = build_optimizer(self.model.parameters(), self.cfg)
        sched = build_scheduler(opt, self.cfg)
        return opt if sched is None else {"optimizer": opt, "lr_scheduler": sched}

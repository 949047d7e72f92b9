"""In-memory batching for small datasets, and the Lightning DataModule over prepared arrays.

A DataLoader collates sample by sample; for data that fits in memory, slicing whole tensors is
several times cheaper per step (see the stack notes), and per-step overhead dominates small models.
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from pipeline.data.prepare import Prepared


class TensorBatches:
    """Iterable of (x, y) mini-batches sliced from in-memory tensors; reshuffled every pass."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0):
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
            x, y = self.x[order], self.y[order]
        else:
            x, y = self.x, self.y
        for i in range(0, n, self.batch_size):
            yield x[i:i + self.batch_size], y[i:i + self.batch_size]


def split_tensors(prepared: Prepared, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = prepared.arrays
    return torch.from_numpy(a[f"x_{split}"]).float(), torch.from_numpy(a[f"y_{split}"]).long()


class PreparedDataModule(pl.LightningDataModule):
    def __init__(self, prepared: Prepared, batch_size: int, seed: int, eval_batch_size: int = 1024):
        super().__init__()
        self.prepared = prepared
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.card = prepared.card

    def train_dataloader(self):
        return TensorBatches(*split_tensors(self.prepared, "train"), self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self):
        return TensorBatches(*split_tensors(self.prepared, "val"), self.eval_batch_size, shuffle=False)

    def test_dataloader(self):
        return TensorBatches(*split_tensors(self.prepared, "test"), self.eval_batch_size, shuffle=False)

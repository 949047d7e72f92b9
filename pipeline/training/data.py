"""In-memory batching for small datasets, and the Lightning DataModule over prepared arrays.

A DataLoader collates sample by sample; for data that fits in memory, slicing whole tensors is
several times cheaper per step (see the stack notes), and per-step overhead dominates small models.
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from pipeline.data.prepare import Prepared


class Batches:
    """Iterable of mini-batches sliced from aligned in-memory tensors (x, y and whatever rides
    along, such as a teacher's logits), as tuples; reshuffled every pass by a seeded generator,
    so the same seed gives the same order whatever tensors ride along. The one batching of the
    train stage, the search's trials and the compress stage's fine-tuning and distillation."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool, seed: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        self.tensors = tuple(tensors)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        # (rank, world size): each rank of a distributed run takes every world-th sample. A
        # shuffled (training) pass is padded by wrapping around, as torch's DistributedSampler
        # does, so every rank takes the same number of steps; an evaluation pass is not padded
        # (its metrics are summed over ranks, each sample counted once).
        self.rank, self.world = shard

    def _size(self) -> int:
        n = len(self.tensors[0])
        if self.world > 1:
            n = math.ceil(n / self.world) if self.shuffle else len(range(self.rank, n, self.world))
        # A training pass leaves out a last batch of one sample: batch norm cannot train on one
        # value per channel (it raises), and the next pass, reshuffled, takes that sample.
        return n - 1 if self.shuffle and n > 1 and n % self.batch_size == 1 else n

    def __len__(self) -> int:
        return math.ceil(self._size() / self.batch_size)

    def __iter__(self):
        n = len(self.tensors[0])
        tensors = self.tensors
        if self.shuffle or self.world > 1:
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            if self.world > 1:
                if self.shuffle:
                    order = order.repeat(math.ceil(self._size() * self.world / n))[:self._size() * self.world]
                order = order[self.rank::self.world]
            tensors = tuple(t[order] for t in tensors)
        for i in range(0, self._size(), self.batch_size):
            yield tuple(t[i:i + self.batch_size] for t in tensors)


class WholeEpochs:
    """A training loader of one item per epoch: the epoch's mini-batches (a ``Batches``), which
    the ``Classifier`` steps through itself. Lightning's per-batch machinery (fetching, moving,
    hooks, progress tracking) then runs once per epoch instead of once per optimizer step: about
    1 ms a step on a 2-core CPU, as much as a small model's whole step
    (benchmarks/training_overhead.py). One process only: under DDP each optimizer step must be a
    forward through the DDP wrapper, so distributed runs take the mini-batches one by one."""

    def __init__(self, batches: Batches):
        self.batches = batches

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.batches


class TensorBatches(Batches):
    """(x, y) mini-batches: ``Batches((x, y), ...)``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool, seed: int = 0,
                 shard: tuple[int, int] = (0, 1)):
        super().__init__((x, y), batch_size, shuffle, seed, shard)


def split_tensors(prepared: Prepared, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = prepared.arrays
    return torch.from_numpy(a[f"x_{split}"]).float(), torch.from_numpy(a[f"y_{split}"]).long()


class PreparedDataModule(pl.LightningDataModule):
    def __init__(self, prepared: Prepared, batch_size: int, seed: int, eval_batch_size: int = 1024):
        super().__init__()
        self.prepared = prepared
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.card = prepared.card

    def _shard(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self):
        shard = self._shard()
        batches = TensorBatches(*split_tensors(self.prepared, "train"), self.batch_size, shuffle=True, seed=self.seed,
                                shard=shard)
        return batches if shard[1] > 1 else WholeEpochs(batches)

    def val_dataloader(self):
        return TensorBatches(*split_tensors(self.prepared, "val"), self.eval_batch_size, shuffle=False,
                             shard=self._shard())

    def test_dataloader(self):
        return TensorBatches(*split_tensors(self.prepared, "test"), self.eval_batch_size, shuffle=False)

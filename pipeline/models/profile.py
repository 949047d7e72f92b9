"""Size and compute of a model: parameters, parameter memory, FLOPs counted by torch itself.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``. It has no formula for some fused
kernels (``nn.LSTM`` on CPU counts 0), so a zero from a layer that does matrix work means "not
counted", never "free": such a model gets ``None`` and a note saying which layers were missed.
A model that can avoid such a kernel says how with its ``flop_counting()`` (see
``pipeline.models.family``): the count runs inside that context.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Layers that always do multiply-adds; a count of 0 for one of them means the counter missed it.
_COMPUTE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.RNNBase, nn.MultiheadAttention)


@dataclass(frozen=True)
class ModelProfile:
    params_total: int
    params_trainable: int
    param_bytes: int
    flops_per_sample_inference: int | None
    flops_per_train_step: int | None  # forward + backward of one batch
    train_batch_size: int
    flops_note: str

    def to_dict(self) -> dict:
        return asdict(self)


class ParamCounts(NamedTuple):
    total: int
    trainable: int
    nonzero: int  # pruning leaves zeros inside dense tensors
    nbytes: int


def count_parameters(model: nn.Module) -> ParamCounts:
    """The one count of a model's parameters (``model.parameters()``: a quantized model holds
    packed int8 weights outside them, so count its float source instead)."""
    params = list(model.parameters())
    return ParamCounts(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        nonzero=int(sum(int((p != 0).sum()) for p in params)),
        nbytes=sum(p.numel() * p.element_size() for p in params),
    )


def _missed_layers(model: nn.Module, counts: dict[str, dict]) -> list[str]:
    missed = []
    # Attention calls its projections functionally: they are counted under the attention module.
    attention = [n + "." for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    for name, mod in model.named_modules():
        if isinstance(mod, _COMPUTE_LAYERS) and not any(name.startswith(a) for a in attention):
            # FlopCounterMode keys modules by their dotted path under the root's class name.
            key = f"{type(model).__name__}.{name}" if name else type(model).__name__
            if sum(counts.get(key, {}).values()) == 0:
                missed.append(f"{name} ({type(mod).__name__})")
    return missed


def _count(model: nn.Module, fn) -> tuple[int, list[str]]:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops(), _missed_layers(model, counter.get_flop_counts())


def profile_model(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, batch_size: int) -> ModelProfile:
    counts = count_parameters(model)
    total, trainable, nbytes = counts.total, counts.trainable, counts.nbytes
    was_training = model.training
    x_inf = torch.randn(4, *input_shape)
    x_train = torch.randn(batch_size, *input_shape)
    y_train = torch.randint(0, num_classes, (batch_size,))
    counting = getattr(model, "flop_counting", nullcontext)
    try:
        model.eval()
        with torch.no_grad(), counting():
            inf_flops, missed = _count(model, lambda: model(x_inf))
        model.train()

        def step():
            loss = nn.functional.cross_entropy(model(x_train), y_train)
            loss.backward()

        with counting():
            train_flops, missed_train = _count(model, step)
        model.zero_grad(set_to_none=True)
    finally:
        model.train(was_training)
    missed = sorted(set(missed) | set(missed_train))
    if missed:
        note = "not countable: torch's FLOP counter has no formula for " + ", ".join(missed)
        return ModelProfile(total, trainable, nbytes, None, None, batch_size, note)
    return ModelProfile(
        total, trainable, nbytes, inf_flops // x_inf.shape[0], train_flops, batch_size,
        "torch.utils.flop_counter.FlopCounterMode",
    )

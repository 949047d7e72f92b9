"""Size and compute of a model: parameters, parameter memory, FLOPs counted by torch itself.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``. It has no formula for some fused
kernels (``nn.LSTM`` on CPU counts 0), so a zero from a layer that does matrix work means "not
counted", never "free": such a model gets ``None`` and a note saying which layers were missed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

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


def count_parameters(model: nn.Module) -> tuple[int, int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return total, trainable, nbytes


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
    total, trainable, nbytes = count_parameters(model)
    was_training = model.training
    x_inf = torch.randn(4, *input_shape)
    x_train = torch.randn(batch_size, *input_shape)
    y_train = torch.randint(0, num_classes, (batch_size,))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention path is invisible to the counter
    try:
        model.eval()
        with torch.no_grad():
            inf_flops, missed = _count(model, lambda: model(x_inf))
        model.train()

        def step():
            loss = nn.functional.cross_entropy(model(x_train), y_train)
            loss.backward()

        train_flops, missed_train = _count(model, step)
        model.zero_grad(set_to_none=True)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    missed = sorted(set(missed) | set(missed_train))
    if missed:
        note = "not countable: torch's FLOP counter has no formula for " + ", ".join(missed)
        return ModelProfile(total, trainable, nbytes, None, None, batch_size, note)
    return ModelProfile(
        total, trainable, nbytes, inf_flops // x_inf.shape[0], train_flops, batch_size,
        "torch.utils.flop_counter.FlopCounterMode",
    )

"""Post-training int8 quantization with PyTorch's eager ``torch.ao.quantization``.

Why this API and not ``torchao``: measured on this project's CPU (README, "compress"), torchao's
int8 configs ran the project's small linear layers 1.3-2x *slower* than fp32 without
``torch.compile``, while the eager int8 kernels (fbgemm/oneDNN under the ``x86`` engine) run the
calibrated static CNN and MLP faster than fp32. ``torch.ao.quantization`` warns that it is
deprecated in favour of torchao; the warning is silenced here and the choice is measured again by
``benchmarks/compression_energy.py``.

Which family gets what:
- ``dynamic`` (every family): int8 weights of ``nn.Linear`` and ``nn.GRU``/``nn.LSTM``,
  activations quantized per batch at run time. The CNN's convolutions have no dynamic kernel, so
  only its classifier is quantized; the Transformer's attention projections (``in_proj``, a bare
  parameter, and ``out_proj``) stay fp32 in PyTorch's dynamic mapping.
- ``static`` (mlp, cnn): weights and activations int8 with scales calibrated on training batches;
  Conv+BatchNorm+ReLU and Linear+ReLU are fused first. Eager static mode has no int8 kernel for
  GRU/LSTM cells, attention, LayerNorm or GELU-free fused encoder layers, so RNN and Transformer
  get no static variant (the stage records why).
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

STATIC_FAMILIES = ("mlp", "cnn")
STATIC_UNSUPPORTED = ("PyTorch's eager static int8 mode has no CPU kernels for {what}; "
                      "only dynamic quantization applies")
_WHAT = {"rnn": "GRU/LSTM cells", "transformer": "self-attention and LayerNorm inside nn.TransformerEncoderLayer"}


def static_unsupported_reason(family: str) -> str | None:
    return None if family in STATIC_FAMILIES else STATIC_UNSUPPORTED.format(what=_WHAT.get(family, family))


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*must run observer before calling calculate_qparams.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        yield


def set_engine(engine: str) -> None:
    """The quantized engine must match between quantizing and running (it packs the weights)."""
    if engine not in torch.backends.quantized.supported_engines:
        raise RuntimeError(f"quantized engine {engine!r} not supported by this torch build "
                           f"(supported: {torch.backends.quantized.supported_engines})")
    torch.backends.quantized.engine = engine


class FastPathOff(nn.Module):
    """Runs the wrapped model with PyTorch's fused Transformer fast path off.

    The fast path reads ``linear1.weight`` as a tensor; a dynamically quantized Linear exposes
    ``weight()`` as a method, so the fused path cannot run it. The wrapped (slow) path is what the
    quantized Transformer really costs, and it is what gets measured."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        was = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return self.model(x)
        finally:
            torch.backends.mha.set_fastpath_enabled(was)


def quantize_dynamic(model: nn.Module, family: str) -> nn.Module:
    """A dynamically quantized (int8) copy of ``model`` in eval mode."""
    from torch.ao.quantization import quantize_dynamic as qd

    with _quiet():
        q = qd(copy.deepcopy(model).eval(), {nn.Linear, nn.GRU, nn.LSTM}, dtype=torch.qint8)
    return FastPathOff(q).eval() if family == "transformer" else q


def _fusion_groups(model: nn.Module, family: str) -> list[list[str]]:
    """Names of Conv+BN+ReLU (cnn) and Linear+ReLU (mlp) runs inside the wrapper (``module.``)."""
    groups = []
    seq = model.features if family == "cnn" else model.net
    prefix = "module.features" if family == "cnn" else "module.net"
    layers = list(seq)
    for i, layer in enumerate(layers):
        if family == "cnn" and isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            if i + 2 < len(layers) and isinstance(layers[i + 1], (nn.BatchNorm1d, nn.BatchNorm2d)) \
                    and isinstance(layers[i + 2], nn.ReLU):
                groups.append([f"{prefix}.{i}", f"{prefix}.{i + 1}", f"{prefix}.{i + 2}"])
        elif family == "mlp" and isinstance(layer, nn.Linear):
            if i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU):
                groups.append([f"{prefix}.{i}", f"{prefix}.{i + 1}"])
    return groups


def _prepare_static(model: nn.Module, family: str, engine: str) -> nn.Module:
    from torch.ao.quantization import QuantWrapper, fuse_modules, get_default_qconfig, prepare

    if family not in STATIC_FAMILIES:
        raise ValueError(static_unsupported_reason(family))
    set_engine(engine)
    wrapped = QuantWrapper(copy.deepcopy(model).eval())
    with _quiet():
        wrapped = fuse_modules(wrapped, _fusion_groups(model, family))
        wrapped.qconfig = get_default_qconfig(engine if engine in ("x86", "fbgemm", "qnnpack", "onednn") else "x86")
        prepare(wrapped, inplace=True)
    return wrapped


def quantize_static(model: nn.Module, family: str, calibration: Iterable[torch.Tensor], engine: str) -> nn.Module:
    """A statically quantized (int8) copy of ``model``; activation ranges observed on the
    ``calibration`` batches (training data, never the test split)."""
    from torch.ao.quantization import convert

    prepared = _prepare_static(model, family, engine)
    with torch.inference_mode():
        for xb in calibration:
            prepared(xb)
    with _quiet():
        return convert(prepared.eval(), inplace=False)


def static_skeleton(model: nn.Module, family: str, engine: str, input_shape: tuple[int, ...]) -> nn.Module:
    """The module structure of a statically quantized ``model`` (scales are then loaded from a
    saved state dict): the same conversion, observed on one batch of zeros."""
    return quantize_static(model, family, [torch.zeros(2, *input_shape)], engine)

"""Post-training int8 quantization with PyTorch's eager ``torch.ao.quantization``.

Why this API and not ``torchao``: measured on this project's CPU (README, "compress"), torchao's
int8 configs ran the project's small linear layers 1.3-2x *slower* than fp32 without
``torch.compile``, while the eager int8 kernels (fbgemm/oneDNN under the ``x86`` engine) run the
calibrated static int8 models faster than fp32. ``torch.ao.quantization`` warns that it is
deprecated in favour of torchao; the warning is silenced here and the choice is measured again by
``benchmarks/compression_energy.py``.

What each mode does, and what the family decides (``pipeline.models.family``):
- ``dynamic`` (every family): int8 weights of ``nn.Linear`` and ``nn.GRU``/``nn.LSTM``,
  activations quantized per batch at run time. Convolutions have no dynamic kernel and stay
  fp32, as do attention's input projections (a bare parameter) in PyTorch's dynamic mapping. The
  family's ``int8_runtime`` wraps the result where its model needs it.
- ``static``: weights and activations int8 with scales calibrated on training batches, for the
  families whose layers all have eager int8 CPU kernels (``static_int8_unsupported`` is None);
  the family's ``fusion_groups`` (Conv+BatchNorm+ReLU, Linear+ReLU) are fused first. Another
  family gets no static variant, and the stage records the reason the family gives.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from pipeline.models.family import get_family


def static_unsupported_reason(family: str) -> str | None:
    """None where static int8 applies to ``family``'s models; otherwise the family's reason."""
    return get_family(family).static_int8_unsupported


def quiet_torch_quantization() -> None:
    """Keep out of the compress stage's output two deprecation warnings that torch prints for its
    own eager-mode int8 code, which is what this module uses and nothing the user can change: the
    quantized tensor constructors, and TypedStorage when such tensors are saved."""
    warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated.*")
    warnings.filterwarnings("ignore", message=r"TypedStorage is deprecated.*")


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


def quantize_dynamic(model: nn.Module, family: str) -> nn.Module:
    """A dynamically quantized (int8) copy of ``model`` in eval mode."""
    from torch.ao.quantization import quantize_dynamic as qd

    with _quiet():
        q = qd(copy.deepcopy(model).eval(), {nn.Linear, nn.GRU, nn.LSTM}, dtype=torch.qint8)
    return get_family(family).int8_runtime(q).eval()


def _prepare_static(model: nn.Module, family: str, engine: str) -> nn.Module:
    from torch.ao.quantization import QuantWrapper, fuse_modules, get_default_qconfig, prepare

    reason = static_unsupported_reason(family)
    if reason:
        raise ValueError(reason)
    set_engine(engine)
    wrapped = QuantWrapper(copy.deepcopy(model).eval())
    # The wrapper holds the model as ``module``.
    groups = [[f"module.{name}" for name in group] for group in get_family(family).fusion_groups(model)]
    with _quiet():
        wrapped = fuse_modules(wrapped, groups)
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

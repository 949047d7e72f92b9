"""The ``transformer`` family: token embedding + positional encoding, self-attention encoder
layers (pre-norm), mean pooling over tokens, linear classifier. A token is ``patch_size`` steps,
more for a series long enough to give more than ``max_tokens`` tokens.

PyTorch runs ``nn.TransformerEncoderLayer`` in eval mode on a fused fast path that torch's FLOP
counter cannot see into and that a dynamically quantized Linear cannot take: the model counts its
FLOPs with the fast path off, and its int8 variants run with it off (``FastPathOff``). Eager
static int8 has no kernel for attention or LayerNorm. Structured pruning removes feed-forward
neurons, which leaves the width of each encoder layer's feed-forward block (``ffn_width``) to the
variant's layout.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pipeline.models.family import Family, FamilyParams, OutputUnits, register_family, weight_matrices
from pipeline.models.tokens import ToTokens, effective_patch


class TransformerParams(FamilyParams):
    d_model: int = Field(64, ge=1)  # token width
    num_heads: int = Field(4, ge=1)
    num_layers: int = Field(2, ge=1)
    ff_mult: int = Field(2, ge=1)  # feed-forward width = ff_mult * d_model
    # Consecutive time steps (or image rows) grouped into one token ...
    patch_size: int = Field(4, ge=1)
    # ... raised for long inputs so that there are at most this many tokens (0: no limit).
    max_tokens: int = Field(64, ge=0)
    positional: Literal["sinusoidal", "learned"] = "sinusoidal"
    dropout: float = Field(0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerParams:
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


@contextmanager
def fastpath_off() -> Iterator[None]:
    """PyTorch's fused Transformer/attention fast path turned off, and restored after."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def sinusoidal_encoding(steps: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(steps, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(steps, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class Transformer(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: TransformerParams):
        super().__init__()
        self.tokens = ToTokens(input_shape, effective_patch(input_shape, cfg.patch_size, cfg.max_tokens))
        self.embed = nn.Linear(self.tokens.features, cfg.d_model)
        if cfg.positional == "learned":
            self.pos = nn.Parameter(torch.zeros(1, self.tokens.steps, cfg.d_model))
            nn.init.normal_(self.pos, std=0.02)
        else:
            self.register_buffer("pos", sinusoidal_encoding(self.tokens.steps, cfg.d_model)[None], persistent=False)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model,
            cfg.num_heads,
            dim_feedforward=cfg.d_model * cfg.ff_mult,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,
        )
        # No nested tensors: inputs are never padded, and the fast path hides FLOPs from counters.
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.tokens(x)) + self.pos
        h = self.encoder(h)
        return self.head(self.norm(h.mean(dim=1)))

    def flop_counting(self):
        """Entered by the profile around torch's FLOP counter: the unfused path, every
        multiply-add visible."""
        return fastpath_off()


class FastPathOff(nn.Module):
    """Runs the wrapped model with PyTorch's fused Transformer fast path off.

    The fast path reads ``linear1.weight`` as a tensor; a dynamically quantized Linear exposes
    ``weight()`` as a method, so the fused path cannot run it. The wrapped (slow) path is what the
    quantized Transformer really costs, and it is what gets measured."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fastpath_off():
            return self.model(x)


@register_family("transformer")
class TransformerFamily(Family):
    Params = TransformerParams
    width_param, depth_param = "d_model", "num_layers"
    static_int8_unsupported = ("PyTorch's eager static int8 mode has no CPU kernels for self-attention and "
                               "LayerNorm inside nn.TransformerEncoderLayer; only dynamic quantization applies")

    def build(self, input_shape, num_classes, params):
        return Transformer(input_shape, num_classes, params)

    def search_space(self):
        return {"d_model": [32, 64], "num_layers": {"low": 1, "high": 2}, "patch_size": [2, 4, 5]}

    def scale(self, params, width_factor, depth_factor):
        """d_model and num_layers multiplied (rounded); d_model stays a multiple of num_heads,
        at least one head's width."""
        heads = params.num_heads
        return self.Params.model_validate({
            **params.model_dump(),
            "d_model": max(heads, round(params.d_model * width_factor / heads) * heads),
            "num_layers": max(1, round(params.num_layers * depth_factor)),
        })

    def student_overrides(self):
        return {"d_model": 32, "num_layers": 1}

    def prunable(self, model):
        return weight_matrices(model)

    def pruning_units(self, model):
        return [OutputUnits(layer.linear1) for layer in model.encoder.layers]

    def compact(self, model, spec, keep):
        width = len(keep[0])
        new = copy.deepcopy(model)
        self.apply_layout(new, {"ffn_width": width})
        with torch.no_grad():
            for old, layer, kept in zip(model.encoder.layers, new.encoder.layers, keep, strict=True):
                layer.linear1.weight.copy_(old.linear1.weight[kept])
                layer.linear1.bias.copy_(old.linear1.bias[kept])
                layer.linear2.weight.copy_(old.linear2.weight[:, kept])
                layer.linear2.bias.copy_(old.linear2.bias)
        return new, spec, {"ffn_width": width}

    def apply_layout(self, model, layout):
        """``ffn_width``: every encoder layer gets a feed-forward block of that many neurons."""
        unknown = set(layout) - {"ffn_width"}
        if unknown:
            raise ValueError(f"family {self.name!r} cannot apply the layout keys {sorted(unknown)}")
        if "ffn_width" in layout:
            width = int(layout["ffn_width"])
            for layer in model.encoder.layers:
                d = layer.linear1.in_features
                layer.linear1, layer.linear2 = nn.Linear(d, width), nn.Linear(width, d)

    def int8_runtime(self, quantized):
        return FastPathOff(quantized)

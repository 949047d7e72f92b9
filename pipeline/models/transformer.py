"""Transformer encoder classifier: token embedding + positional encoding, self-attention
layers (pre-norm), mean pooling over tokens, linear classifier."""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config import TransformerCfg
from pipeline.models.tokens import ToTokens


def sinusoidal_encoding(steps: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(steps, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    pe = torch.zeros(steps, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class Transformer(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: TransformerCfg):
        super().__init__()
        self.tokens = ToTokens(input_shape, cfg.patch_size)
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

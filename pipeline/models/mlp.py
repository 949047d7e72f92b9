"""Feed-forward network over the flattened input."""
from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.config import MLPCfg


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: MLPCfg):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = math.prod(input_shape)
        for _ in range(cfg.depth):
            layers += [nn.Linear(width_in, cfg.width), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width_in = cfg.width
        layers.append(nn.Linear(width_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

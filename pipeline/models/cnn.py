"""Convolutional network: 1-D convolutions for sequences (C, L), 2-D for images (C, H, W).

Each block is conv -> batch norm -> ReLU, followed by 2x max pooling while the spatial size is
at least 4, so the same depth works on a 40-step sequence and on an 8x8 image. The last feature
map is flattened (keeping position information) into the classifier.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.config import CNNCfg


class CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: CNNCfg):
        super().__init__()
        if len(input_shape) == 2:
            conv, norm, pool = nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d
        elif len(input_shape) == 3:
            conv, norm, pool = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
        else:
            raise ValueError(f"CNN input must be (C, L) or (C, H, W), got {tuple(input_shape)}")
        spatial = list(input_shape[1:])
        channels_in = input_shape[0]
        blocks: list[nn.Module] = []
        for _ in range(cfg.depth):
            blocks += [
                conv(channels_in, cfg.channels, cfg.kernel_size, padding=cfg.kernel_size // 2),
                norm(cfg.channels),
                nn.ReLU(),
            ]
            # "same" padding keeps odd kernels' size; an even kernel adds one step per layer.
            spatial = [s + 2 * (cfg.kernel_size // 2) - cfg.kernel_size + 1 for s in spatial]
            if min(spatial) >= 4:
                blocks.append(pool(2))
                spatial = [s // 2 for s in spatial]
            channels_in = cfg.channels
        self.features = nn.Sequential(*blocks)
        with torch.no_grad():  # derive the classifier's width from the input shape
            flat = self.features(torch.zeros(1, *input_shape)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(flat, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

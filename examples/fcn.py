"""A user model family from outside the pipeline: the fully convolutional network (FCN) of
Wang, Yan & Oates, "Time series classification from scratch with deep neural networks: a strong
baseline" (IJCNN 2017).

Three blocks of Conv1d -> BatchNorm -> ReLU with 128, 256 and 128 filters of
kernel sizes 8, 5 and 3, global average pooling over time, and a linear classifier (the paper's
softmax is in the loss). Point the pipeline at it in params.yaml::

    families: [mlp, cnn, fcn]
    models:
      fcn: {target: "examples.fcn:fcn", channels: 128}

The attributes set below the function declare what the pipeline may do with the family beyond
training it (pipeline/models/user_family.py lists them); without them those stages skip it with
the reason.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.family import OutputUnits


class FCN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, channels: int, kernel_sizes: list[int]):
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise ValueError(f"FCN takes series (channels, length) or (length,), got input shape {input_shape}")
        c_in = input_shape[0] if len(input_shape) == 2 else 1
        widths = [channels, 2 * channels, channels]
        layers: list[nn.Module] = []
        for width, k in zip(widths, kernel_sizes, strict=True):
            # padding k // 2 keeps the length for odd kernels (one step more for even ones, which the
            # global pooling absorbs); unlike padding="same" it has an int8 kernel.
            layers += [nn.Conv1d(c_in, width, k, padding=k // 2), nn.BatchNorm1d(width), nn.ReLU()]
            c_in = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # (batch, length): one channel
            x = x.unsqueeze(1)
        return self.head(self.pool(self.features(x)).flatten(1))


def fcn(input_shape: tuple[int, ...], num_classes: int, channels: int = 128,
        kernel_sizes: list[int] = (8, 5, 3)) -> nn.Module:
    """The FCN for samples of ``input_shape`` and ``num_classes`` classes; ``channels`` filters in
    the first and last blocks (twice as many in the middle one), as in the paper at 128."""
    if len(kernel_sizes) != 3:
        raise ValueError(f"kernel_sizes: three kernel sizes, one per block, got {list(kernel_sizes)}")
    return FCN(tuple(input_shape), num_classes, channels, list(kernel_sizes))


def _convs(model: FCN) -> list[tuple[int, nn.Module]]:
    return [(i, m) for i, m in enumerate(model.features) if isinstance(m, nn.Conv1d)]


def _pruning_units(model: FCN) -> list[OutputUnits]:
    layers = list(model.features)
    return [OutputUnits(conv, (layers[i + 1],)) for i, conv in _convs(model)]


def _fusion_groups(model: FCN) -> list[list[str]]:
    return [[f"features.{i}", f"features.{i + 1}", f"features.{i + 2}"] for i, _ in _convs(model)]


# What the pipeline may do with the family (see pipeline/models/user_family.py).
fcn.search_space = {"channels": [32, 64, 128]}  # tune.space.fcn unless params.yaml gives one
fcn.width_param = "channels"  # the size sweep multiplies it (the depth is the paper's three blocks)
fcn.student_overrides = {"channels": 32}  # the distilled student
fcn.prunable = True  # global pruning may zero any weight matrix
fcn.pruning_units = _pruning_units  # structured pruning zeroes whole filters (kept in place: no compact)
fcn.static_int8 = True  # Conv+BatchNorm+ReLU, pooling and Linear all have eager int8 CPU kernels
fcn.fusion_groups = _fusion_groups

"""The ``cnn`` family: 1-D convolutions for sequences (C, L), 2-D for images (C, H, W).

Each block is conv -> batch norm -> ReLU, followed by 2x max pooling while the spatial size is
at least 4, so the same depth works on a 40-step sequence and on an 8x8 image. The last feature
map is flattened (keeping position information) into the classifier where it is short, averaged
over its positions where it is long (``head``), so the classifier does not grow with the input. Every layer has eager int8
CPU kernels, so static quantization applies (Conv+BatchNorm+ReLU fused); structured pruning
removes whole channels.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.family import Family, FamilyParams, OutputUnits, register_family, weight_matrices

_CONV = (nn.Conv1d, nn.Conv2d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d)


class CNNParams(FamilyParams):
    channels: int = Field(32, ge=1)  # of every conv layer
    depth: int = Field(3, ge=1)  # conv blocks
    kernel_size: int = Field(5, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    # How the last feature map reaches the classifier: flattened (keeps where a feature is), its
    # global average (where it is does not matter: the same weights for any length), or auto:
    # flattened while the map has at most 16 positions, global average beyond.
    head: Literal["auto", "flatten", "global_avg"] = "auto"


# auto: the longest final map that is flattened (a 40-step series ends with 5 positions).
FLATTEN_MAX_POSITIONS = 16


class CNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: CNNParams):
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
        # Derive the classifier's width from the input shape; in eval mode, so that batch norm
        # neither needs two values per channel (a 1-feature table) nor counts the probe in its statistics.
        with torch.no_grad():
            out = self.features.eval()(torch.zeros(1, *input_shape))
        self.features.train()
        positions = out[0, 0].numel()
        if cfg.head == "global_avg" or (cfg.head == "auto" and positions > FLATTEN_MAX_POSITIONS):
            pool_all = nn.AdaptiveAvgPool1d(1) if len(input_shape) == 2 else nn.AdaptiveAvgPool2d(1)
            self.head = nn.Sequential(pool_all, nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(cfg.channels, num_classes))
        else:
            self.head = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(out.numel(), num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_family("cnn")
class CNNFamily(Family):
    Params = CNNParams
    width_param, depth_param = "channels", "depth"
    static_int8_unsupported = None

    def build(self, input_shape, num_classes, params):
        return CNN(input_shape, num_classes, params)

    def search_space(self):
        return {"channels": [16, 32, 64], "depth": {"low": 2, "high": 4}}

    def student_overrides(self):
        return {"channels": 16}

    def prunable(self, model):
        return weight_matrices(model)

    def pruning_units(self, model):
        layers = list(model.features)
        return [OutputUnits(layer, tuple(n for n in layers[i + 1:i + 2] if isinstance(n, _NORM)))
                for i, layer in enumerate(layers) if isinstance(layer, _CONV)]

    def compact(self, model, spec, keep):
        new_spec = ModelSpec(spec.family, spec.input_shape, spec.num_classes, {**spec.hparams, "channels": len(keep[0])})
        new = build_model(new_spec)
        old_layers = list(model.features)
        prev, ci = None, 0
        with torch.no_grad():
            for old, layer in zip(old_layers, new.features, strict=True):
                if isinstance(old, _CONV):
                    kept = keep[ci]
                    layer.weight.copy_(old.weight[kept] if prev is None else old.weight[kept][:, prev])
                    layer.bias.copy_(old.bias[kept])
                    prev, ci = kept, ci + 1
                elif isinstance(old, _NORM):
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(layer, name).copy_(getattr(old, name)[prev])
                    layer.num_batches_tracked.copy_(old.num_batches_tracked)
            head_old, head_new = model.head[-1], new.head[-1]
            c_old = [layer for layer in old_layers if isinstance(layer, _CONV)][-1].out_channels
            # the flattened feature map is channel-major: keep the kept channels' positions
            w = head_old.weight.view(head_old.out_features, c_old, -1)[:, prev].reshape(head_old.out_features, -1)
            head_new.weight.copy_(w)
            head_new.bias.copy_(head_old.bias)
        return new, new_spec, {}

    def fusion_groups(self, model):
        layers = list(model.features)
        return [[f"features.{i}", f"features.{i + 1}", f"features.{i + 2}"] for i, layer in enumerate(layers[:-2])
                if isinstance(layer, _CONV) and isinstance(layers[i + 1], _NORM) and isinstance(layers[i + 2], nn.ReLU)]

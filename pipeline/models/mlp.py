"""The ``mlp`` family: a feed-forward network over the flattened input.

``depth`` hidden layers of ``width`` neurons (Linear -> ReLU -> Dropout), then a linear
classifier. Every layer has eager int8 CPU kernels, so static quantization applies (Linear+ReLU
fused); structured pruning removes whole hidden neurons.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.family import Family, FamilyParams, OutputUnits, register_family, weight_matrices


class MLPParams(FamilyParams):
    width: int = Field(256, ge=1)  # neurons per hidden layer
    depth: int = Field(2, ge=1)  # hidden layers
    dropout: float = Field(0.1, ge=0, lt=1)


class MLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int, cfg: MLPParams):
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


def _linears(model: MLP) -> list[nn.Linear]:
    return [m for m in model.net if isinstance(m, nn.Linear)]


@register_family("mlp")
class MLPFamily(Family):
    Params = MLPParams
    width_param, depth_param = "width", "depth"
    static_int8_unsupported = None

    def build(self, input_shape, num_classes, params):
        return MLP(input_shape, num_classes, params)

    def search_space(self):
        return {"width": [128, 256, 512], "depth": {"low": 1, "high": 3}}

    def student_overrides(self):
        return {"width": 64}

    def prunable(self, model):
        return weight_matrices(model)

    def pruning_units(self, model):
        return [OutputUnits(lin) for lin in _linears(model)[:-1]]  # the classifier keeps its classes

    def compact(self, model, spec, keep):
        new_spec = ModelSpec(spec.family, spec.input_shape, spec.num_classes, {**spec.hparams, "width": len(keep[0])})
        new = build_model(new_spec)
        prev = None
        with torch.no_grad():
            for i, (old, lin) in enumerate(zip(_linears(model), _linears(new), strict=True)):
                rows = keep[i] if i < len(keep) else slice(None)
                lin.weight.copy_((old.weight if prev is None else old.weight[:, prev])[rows])
                lin.bias.copy_(old.bias[rows])
                prev = keep[i] if i < len(keep) else None
        return new, new_spec, {}

    def fusion_groups(self, model):
        layers = list(model.net)
        return [[f"net.{i}", f"net.{i + 1}"] for i, layer in enumerate(layers[:-1])
                if isinstance(layer, nn.Linear) and isinstance(layers[i + 1], nn.ReLU)]

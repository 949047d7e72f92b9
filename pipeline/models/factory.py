"""One factory builds every family from (input shape, number of classes, hyperparameters)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from pipeline.config import CNNCfg, MLPCfg, RNNCfg, TransformerCfg
from pipeline.models.cnn import CNN
from pipeline.models.mlp import MLP
from pipeline.models.rnn import RNN
from pipeline.models.transformer import Transformer

REGISTRY: dict[str, tuple[type[nn.Module], type]] = {
    "mlp": (MLP, MLPCfg),
    "cnn": (CNN, CNNCfg),
    "rnn": (RNN, RNNCfg),
    "transformer": (Transformer, TransformerCfg),
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model before loading its weights."""

    family: str
    input_shape: tuple[int, ...]
    num_classes: int
    hparams: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        return cls(d["family"], tuple(d["input_shape"]), int(d["num_classes"]), dict(d["hparams"]))


def build_model(spec: ModelSpec) -> nn.Module:
    try:
        model_cls, cfg_cls = REGISTRY[spec.family]
    except KeyError:
        raise ValueError(f"unknown model family {spec.family!r}; known: {sorted(REGISTRY)}") from None
    return model_cls(tuple(spec.input_shape), spec.num_classes, cfg_cls.model_validate(spec.hparams))

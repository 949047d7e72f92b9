"""One factory builds every family's model from (family, input shape, number of classes,
hyperparameters), through the family registry (``pipeline.models.family``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pipeline.models.family import get_family

if TYPE_CHECKING:
    from torch import nn


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
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(d["family"], tuple(d["input_shape"]), int(d["num_classes"]), dict(d["hparams"]))


def build_model(spec: ModelSpec) -> nn.Module:
    """The family's model with freshly initialised weights (torch's global RNG)."""
    family = get_family(spec.family)
    return family.build(tuple(spec.input_shape), spec.num_classes, family.Params.model_validate(spec.hparams))

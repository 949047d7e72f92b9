"""Model families: the interface one family implements, and the registry the stages ask.

A family is one module that says everything the pipeline needs to know about one kind of model:
its typed parameters with their defaults and bounds (``models.<name>`` in params.yaml), how to
build it, its default search space, how the size sweep scales it, what its distilled student
changes, which layers pruning and quantization may touch. Stages ask the family and never branch
on its name; what a family does not declare, the stage that needs it skips with a stated reason.

A family subclasses ``Family`` and registers itself, in the spirit of timm's ``register_model``::

    @register_family("linear")
    class Linear(Family):
        Params = LinearParams            # a pydantic model: fields, defaults, bounds
        width_param, depth_param = "hidden", "layers"   # what the size sweep multiplies

        def build(self, input_shape, num_classes, params):
            return LinearNet(input_shape, num_classes, params)

FLOP counting: torch's counter misses the work of fused kernels. A model whose forward can take
such a path defines ``flop_counting()`` on its ``nn.Module``: a context manager the profile enters
around the count (e.g. one that turns the fused path off), so the fix-up follows the model through
copies and compression.

Everything here is public: a family defined outside this package uses the same names. This module
imports no torch, so loading the config stays cheap; the built-in families (their modules import
torch) register on the first look-up.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from pipeline.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from pipeline.models.factory import ModelSpec

F = TypeVar("F", bound=type)

# Keys that share a mapping with family names in params.yaml (tune.space.train, student_family: same).
RESERVED = ("train", "same")


class FamilyParams(BaseModel):
    """A convenient base for a family's ``Params``: unknown keys are errors (a misspelt key is
    never a silent default) and values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class OutputUnits:
    """The output units (neurons, channels) of one Linear or Conv layer, for structured pruning.
    ``followers`` hold one entry per unit too (a BatchNorm right after the layer) and lose the
    same units."""

    layer: nn.Module
    followers: tuple[nn.Module, ...] = ()


@dataclass(frozen=True)
class RecurrentUnits:
    """The hidden units of every layer and direction of a GRU or LSTM, for structured pruning:
    a unit's rows of every gate go together."""

    layer: nn.Module


PruningUnits = OutputUnits | RecurrentUnits

# Why a family whose ``scale`` returns None is not swept.
NOT_SCALABLE = "it declares no size scaling (Family.scale, or width_param and depth_param)"


class Family(ABC):
    """One model family. A subclass sets ``Params`` and implements ``build``; every other member
    has a default that declares nothing, and the stage that would use it skips with a reason."""

    #: The registered name (set by ``register_family``).
    name: str = ""
    #: The family's hyperparameters: a pydantic model whose every field has a default (the
    #: defaults are what params.yaml ships), strict like ``FamilyParams``.
    Params: ClassVar[type[BaseModel]]
    #: The fields of ``Params`` that the size sweep's width and depth factors multiply; the
    #: default ``scale`` needs both.
    width_param: ClassVar[str | None] = None
    depth_param: ClassVar[str | None] = None
    #: None where PyTorch's eager static int8 mode runs the family's models on a CPU (after
    #: fusing ``fusion_groups``); otherwise why it cannot: the skipped variant's reason.
    static_int8_unsupported: ClassVar[str | None] = "the family declares no static int8 support"

    @abstractmethod
    def build(self, input_shape: tuple[int, ...], num_classes: int, params: BaseModel) -> nn.Module:
        """The model for samples of ``input_shape`` (channels first) and ``num_classes`` classes,
        returning logits of shape (batch, num_classes)."""

    def search_space(self) -> dict[str, Any]:
        """The default search space (``tune.space.<name>``), over fields of ``Params``: a list of
        choices or ``{"low": ..., "high": ..., "log": ...}`` per field. Empty: a search of this
        family tunes the training parameters only."""
        return {}

    def scale(self, params: BaseModel, width_factor: float, depth_factor: float) -> BaseModel | None:
        """``params`` resized for the size sweep: ``width_param`` and ``depth_param`` multiplied
        by the factors (rounded, at least 1). A family that names only one of them is swept along
        that one (the other factor must be 1). None: the family cannot be swept to that point."""
        if self.width_param is None and self.depth_param is None:
            return None
        hp = params.model_dump()
        for param, factor in ((self.width_param, width_factor), (self.depth_param, depth_factor)):
            if param is None:
                if factor != 1:
                    return None
                continue
            hp[param] = max(1, round(hp[param] * factor))
        return self.Params.model_validate(hp)

    def student_overrides(self) -> dict[str, Any]:
        """The default ``compress.distill.student.<name>``: fields of ``Params`` a distilled
        student of this family sets to be smaller than its teacher. Empty: no student unless
        params.yaml names one."""
        return {}

    def prunable(self, model: nn.Module) -> list[tuple[nn.Module, str]]:
        """(module, parameter name) of the weights global magnitude pruning may zero
        (``weight_matrices`` finds the usual ones). Empty: no global pruning."""
        return []

    def pruning_units(self, model: nn.Module) -> list[PruningUnits]:
        """The units structured pruning removes, in forward order. Empty: no structured
        pruning."""
        return []

    def compact(self, model: nn.Module, spec: ModelSpec, keep: list) -> tuple[nn.Module, ModelSpec, dict]:
        """``model`` (its pruned units zeroed, masks made permanent) rebuilt without them: the
        smaller model, its spec, and the layout (``apply_layout``) its params cannot express.
        ``keep`` holds, per entry of ``pruning_units`` (per layer and direction of a recurrent
        one), the sorted indices of the units kept. Default: nothing removed; the zeroed units
        stay in a model of the original size."""
        return model, spec, {}

    def apply_layout(self, model: nn.Module, layout: dict) -> None:
        """Give a model just built from its spec the structure that ``compact`` recorded in
        ``layout`` (e.g. narrower feed-forward blocks), before its saved weights load."""
        if layout:
            raise ValueError(f"family {self.name!r} cannot apply the layout {layout}")

    def fusion_groups(self, model: nn.Module) -> list[list[str]]:
        """Runs of module names in ``model`` (Conv+BatchNorm+ReLU, Linear+ReLU) fused into one
        int8 kernel before static quantization."""
        return []

    def int8_runtime(self, quantized: nn.Module) -> nn.Module:
        """What runs a quantized model of the family (e.g. a wrapper that keeps it off a fused
        path its int8 layers cannot take). Default: the model itself."""
        return quantized


def _builtins() -> tuple:
    # The built-ins register themselves when first imported (their modules import torch).
    from pipeline.models import cnn, mlp, rnn, transformer

    return mlp, cnn, rnn, transformer


_FAMILIES: Registry[Family] = Registry("model family", _builtins, reserved=RESERVED)


def register_family(name: str) -> Callable[[F], F]:
    """Class decorator: register an instance of the decorated ``Family`` subclass as ``name``."""
    return _FAMILIES.register(name)


def add_family(name: str, family: Family, replace: bool = False) -> Family:
    """Register the instance ``family`` as ``name`` (``replace``: a name registered before may be
    given a new instance, as a user family is when params load again)."""
    return _FAMILIES.add(name, family, replace=replace)


def check_family_name(name: str) -> None:
    """ValueError where ``name`` cannot be a family's name (a path component, a DVC matrix value)."""
    _FAMILIES.check_name(name)


def find_family(name: str) -> Family | None:
    """The family registered as ``name``, or None."""
    return _FAMILIES.items().get(name)


def families() -> tuple[str, ...]:
    """The registered families' names: the built-ins first, in this order (that of the default
    params.families and of the figures' colours), then the others as registered."""
    return _FAMILIES.names()


def get_family(name: str) -> Family:
    return _FAMILIES.get(name)


def weight_matrices(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Every weight matrix of ``model`` that does multiply-adds, biases and norms excluded:
    Linear and Conv weights, GRU/LSTM weights, attention's packed input projection."""
    from torch import nn

    out: list[tuple[nn.Module, str]] = []
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out.append((m, "weight"))
        elif isinstance(m, nn.RNNBase):
            out += [(m, n) for n in m._flat_weights_names if n.startswith("weight")]
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            out.append((m, "in_proj_weight"))
    return out

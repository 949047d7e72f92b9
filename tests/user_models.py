"""Callables a user might point ``models.<name>.target`` at, good and bad (tests/test_user_family.py)."""
import math

from pydantic import Field
from torch import nn

from pipeline.models.family import Family, FamilyParams, weight_matrices

NOT_CALLABLE = 42


def linear(input_shape, num_classes, hidden: int = 8):
    """A good one: flatten -> Linear -> ReLU -> Linear."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def returns_a_dict(input_shape, num_classes):
    return {"not": "a module"}


def wrong_classes(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes + 1))


def needs_depth(input_shape, num_classes, depth):
    return linear(input_shape, num_classes)


def raises(input_shape, num_classes):
    raise RuntimeError("no GPU here")


def takes_one(input_shape):
    return linear(input_shape, 2)


class TinyNet(nn.Module):
    """A model class as the target: its constructor takes (input_shape, num_classes, **keywords)."""

    def __init__(self, input_shape, num_classes, hidden: int = 4):
        super().__init__()
        self.net = linear(input_shape, num_classes, hidden)

    def forward(self, x):
        return self.net(x)


class LinearParams(FamilyParams):
    hidden: int = Field(8, ge=1)


class LinearFamily(Family):
    """A whole family from outside the package, named by target: its Params, build and pruning."""

    Params = LinearParams
    width_param = "hidden"

    def build(self, input_shape, num_classes, params):
        return linear(input_shape, num_classes, params.hidden)

    def prunable(self, model):
        return weight_matrices(model)

"""Callables a user might point ``models.<name>.target`` at, good and bad (tests/test_user_family.py)."""
import math

from torch import nn

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

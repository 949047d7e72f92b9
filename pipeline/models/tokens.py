"""Turn the shared batch layout into a token sequence, for the families that read tokens.

Sequences (B, C, L) become L tokens of C features; images (B, C, H, W) become H tokens (rows) of
C*W features. ``patch`` groups that many consecutive tokens into one (zero-padding the end); ``effective_patch``
raises it for long inputs.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def effective_patch(input_shape: tuple[int, ...], patch: int, max_tokens: int) -> int:
    """The patch that families reading tokens use: ``patch``, or larger where the input is long
    enough that ``patch`` would give more than ``max_tokens`` tokens (so the same defaults serve
    a 40-step and a 1,000-step series: recurrence and attention cost grow with the token count).
    ``max_tokens`` 0: ``patch`` as it is."""
    steps = token_shape(input_shape)[0]
    return patch if max_tokens <= 0 else max(patch, math.ceil(steps / max_tokens))


def token_shape(input_shape: tuple[int, ...], patch: int = 1) -> tuple[int, int]:
    """(number of tokens, features per token) for a sample of ``input_shape``."""
    if len(input_shape) == 2:  # (C, L)
        steps, feats = input_shape[1], input_shape[0]
    elif len(input_shape) == 3:  # (C, H, W)
        steps, feats = input_shape[1], input_shape[0] * input_shape[2]
    else:
        raise ValueError(f"input shape must be (C, L) or (C, H, W), got {tuple(input_shape)}")
    return math.ceil(steps / patch), feats * patch


class ToTokens(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], patch: int = 1):
        super().__init__()
        self.image = len(input_shape) == 3
        self.patch = patch
        self.steps, self.features = token_shape(input_shape, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.image:  # (B, C, H, W) -> (B, H, C*W)
            x = x.permute(0, 2, 1, 3).flatten(2)
        else:  # (B, C, L) -> (B, L, C)
            x = x.transpose(1, 2)
        if self.patch > 1:
            pad = self.steps * self.patch - x.shape[1]
            if pad:
                x = nn.functional.pad(x, (0, 0, 0, pad))
            x = x.reshape(x.shape[0], self.steps, self.features)
        return x

"""Failures the CLI reports as one clear line (no traceback), importable without torch."""
from __future__ import annotations


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""

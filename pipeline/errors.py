"""Failures the CLI reports as one clear line (no traceback), importable without torch."""
from __future__ import annotations


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite."""


class FamilyError(ValueError):
    """A user's model family (``models.<name>.target``) that cannot be used; the message names the
    params key and what is wrong."""


class NothingToSelect(RuntimeError):
    """A study ended without a completed trial to choose; the message says what became of its
    trials and what to change."""


class StoreError(RuntimeError):
    """A tracking store that cannot be reached or used (``tracking.tracking_uri`` or
    ``MLFLOW_TRACKING_URI``); the message names the URI and where it came from."""


class SavedModelError(ValueError):
    """A saved model (``models/<family>/<variant>/``) whose files cannot be read or do not fit
    together; the message names the file and what is wrong."""

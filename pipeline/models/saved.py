"""A model on disk and back: ``model.pt`` (its state dict) beside ``spec.json`` (the architecture
it is rebuilt from). The one writer and reader of both: the train stage, the search's refit and
the sweep write trained models (``models/<family>/<variant>/``, read by
``evaluation.evaluate.load_trained``); the compress stage writes its variants with a recipe
beside them (``compression.artifact``).

Weights are loaded weights-only (no pickled code runs); quantized GRU/LSTM weights are torch's
own packed ``ScriptObject``s, allowed explicitly.
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pipeline.errors import SavedModelError
from pipeline.models.factory import ModelSpec, build_model
from pipeline.paths import write_json

MODEL, SPEC = "model.pt", "spec.json"


def save_model(out_dir: Path, model: nn.Module, spec: ModelSpec) -> Path:
    """Write ``model.pt`` and ``spec.json`` into ``out_dir``; returns the weights' path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / MODEL)
    write_json(spec.to_dict(), out_dir / SPEC)
    return out_dir / MODEL


#: What an error about a saved model's files adds: how to get them back.
REWRITE = "`dvc repro` writes it again (the stage that made it reruns when its output changed)"


def read_record(file: Path, what: str) -> dict:
    """A JSON file written beside a saved model (its spec, run record, recipe), as a dict; a
    damaged one is a ``SavedModelError`` naming it."""
    try:
        record = json.loads(Path(file).read_text())
    except ValueError as err:
        raise SavedModelError(f"{file}: not a readable {what} ({type(err).__name__}: {err}); {REWRITE}") from None
    if not isinstance(record, dict):
        raise SavedModelError(f"{file}: not a readable {what} (a JSON object expected); {REWRITE}")
    return record


def read_spec(out_dir: Path) -> ModelSpec:
    file = Path(out_dir) / SPEC
    record = read_record(file, "model spec")
    try:
        return ModelSpec.from_dict(record)
    except (ValueError, TypeError, KeyError) as err:
        raise SavedModelError(f"{file}: not a readable model spec ({type(err).__name__}: {err}); {REWRITE}") from None


def load_model(out_dir: Path, skeleton: Callable[[ModelSpec], nn.Module] = build_model
               ) -> tuple[nn.Module, ModelSpec]:
    """(model in eval mode, its spec) from ``out_dir``: ``skeleton(spec)`` builds the module
    structure the saved state dict belongs to (default: the float architecture), then the saved
    weights are loaded into it."""
    spec = read_spec(out_dir)
    model = skeleton(spec)
    file = Path(out_dir) / MODEL
    try:
        with torch.serialization.safe_globals([torch.ScriptObject]):
            state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's weights-only unpickler met something else than tensors
        raise SavedModelError(f"{file}: refused: it holds objects beyond tensors, whose loading could run code "
                              f"(weights are loaded weights-only); {REWRITE}") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise SavedModelError(f"{file}: not readable weights ({type(err).__name__}: "
                              f"{_short(err)}); {REWRITE}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise SavedModelError(f"{file}: its weights do not fit the model {SPEC} beside it describes "
                              f"({_short(err)}); {REWRITE}") from None
    return model.eval(), spec


def _short(err: BaseException, limit: int = 240) -> str:
    """An exception's text on one line, cut at ``limit`` characters (torch's run to many lines)."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + " ..."

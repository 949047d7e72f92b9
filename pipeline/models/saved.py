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
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

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


def read_spec(out_dir: Path) -> ModelSpec:
    return ModelSpec.from_dict(json.loads((Path(out_dir) / SPEC).read_text()))


def load_model(out_dir: Path, skeleton: Callable[[ModelSpec], nn.Module] = build_model
               ) -> tuple[nn.Module, ModelSpec]:
    """(model in eval mode, its spec) from ``out_dir``: ``skeleton(spec)`` builds the module
    structure the saved state dict belongs to (default: the float architecture), then the saved
    weights are loaded into it."""
    spec = read_spec(out_dir)
    model = skeleton(spec)
    with torch.serialization.safe_globals([torch.ScriptObject]):
        state = torch.load(Path(out_dir) / MODEL, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), spec

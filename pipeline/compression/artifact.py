"""A compressed variant on disk, and back: ``model.pt`` (state dict), ``spec.json`` (the float
architecture it is built from) and ``variant.json`` (how it was made: technique, level,
quantization mode and engine, resized layers, source model).

Loading rebuilds the float architecture, applies the same structural transformation
(quantization wrappers, resized feed-forward layers) and loads the saved weights, so what is
measured is what was saved."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline.compression.prune import resize_ffn
from pipeline.compression.quantize import quantize_dynamic, set_engine, static_skeleton
from pipeline.models.factory import ModelSpec, build_model

MODEL, SPEC, RECIPE = "model.pt", "spec.json", "variant.json"


def save_variant(out_dir: Path, model: nn.Module, spec: ModelSpec, recipe: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / MODEL)
    (out_dir / SPEC).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")
    (out_dir / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
    return out_dir / MODEL


def build_skeleton(spec: ModelSpec, recipe: dict) -> nn.Module:
    """The module structure the saved state dict belongs to (weights not loaded)."""
    model = build_model(spec).eval()
    if recipe.get("ffn_width"):
        resize_ffn(model, int(recipe["ffn_width"]))
    mode = recipe.get("quantization")
    if mode:
        set_engine(recipe["engine"])
    if mode == "dynamic":
        model = quantize_dynamic(model, spec.family)
    elif mode == "static":
        model = static_skeleton(model, spec.family, recipe["engine"], spec.input_shape)
    return model.eval()


def load_variant(out_dir: Path) -> tuple[nn.Module, ModelSpec, dict]:
    spec = ModelSpec.from_dict(json.loads((out_dir / SPEC).read_text()))
    recipe = json.loads((out_dir / RECIPE).read_text())
    model = build_skeleton(spec, recipe)
    # Weights only; quantized GRU/LSTM weights are torch's own packed ScriptObjects.
    with torch.serialization.safe_globals([torch.ScriptObject]):
        state = torch.load(out_dir / MODEL, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), spec, recipe

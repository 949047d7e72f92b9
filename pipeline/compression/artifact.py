"""A compressed variant on disk, and back: ``model.pt`` (state dict) and ``spec.json`` (the float
architecture it is built from), written and read like every saved model (``models.saved``), and
``variant.json`` (how it was made: technique, level, quantization mode and engine, the layout
of resized layers, source model).

Loading rebuilds the float architecture, applies the same structural transformation (the
family's ``apply_layout`` of a compacted model, quantization wrappers) and loads the saved
weights, so what is measured is what was saved."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline.compression.quantize import quantize_dynamic, set_engine, static_skeleton
from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.family import get_family
from pipeline.models.saved import load_model, read_record, save_model
from pipeline.paths import write_json

RECIPE = "variant.json"


def save_variant(out_dir: Path, model: nn.Module, spec: ModelSpec, recipe: dict) -> Path:
    path = save_model(out_dir, model, spec)
    write_json(recipe, out_dir / RECIPE)
    return path


def build_skeleton(spec: ModelSpec, recipe: dict) -> nn.Module:
    """The module structure the saved state dict belongs to (weights not loaded)."""
    model = build_model(spec).eval()
    if recipe.get("layout"):
        get_family(spec.family).apply_layout(model, recipe["layout"])
    mode = recipe.get("quantization")
    if mode:
        set_engine(recipe["engine"])
    if mode == "dynamic":
        model = quantize_dynamic(model, spec.family)
    elif mode == "static":
        model = static_skeleton(model, spec.family, recipe["engine"], spec.input_shape)
    return model.eval()


def load_variant(out_dir: Path) -> tuple[nn.Module, ModelSpec, dict]:
    recipe = read_record(Path(out_dir) / RECIPE, "compression recipe")
    model, spec = load_model(out_dir, lambda spec: build_skeleton(spec, recipe))
    return model, spec, recipe

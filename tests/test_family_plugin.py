"""A model family from outside the pipeline: defined here with only the public names of
``pipeline.models.family``, registered for one test, and run through every stage; and a family
that declares nothing but its params and its model, whose missing capabilities every stage skips
with the reason instead of failing."""
import json
import math

import pytest
import torch
from pydantic import Field
from torch import nn

from pipeline import paths
from pipeline.compression.compress import compress_family
from pipeline.compression.summary import compression_section, load_rows
from pipeline.config import ParamsError, parse_params
from pipeline.data.prepare import prepare, save
from pipeline.evaluation.evaluate import evaluate_family
from pipeline.models import family as registry
from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.family import Family, FamilyParams, OutputUnits, register_family, weight_matrices
from pipeline.reporting.compare import Filters
from pipeline.reporting.report import load, write_outputs
from pipeline.sweep import scaled_hparams
from pipeline.tracking import client_for
from pipeline.training.train import train_family
from pipeline.tuning.tune import tune_family

from .conftest import tiny_raw


class TinyConvParams(FamilyParams):
    channels: int = Field(8, ge=1)
    layers: int = Field(1, ge=1)


class TinyConvNet(nn.Module):
    """Conv1d(kernel 3, length kept) -> ReLU blocks, flattened into a linear classifier."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, p: TinyConvParams):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = input_shape[0]
        for _ in range(p.layers):
            blocks += [nn.Conv1d(c_in, p.channels, 3, padding=1), nn.ReLU()]
            c_in = p.channels
        self.convs = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(p.channels * input_shape[1], num_classes))

    def forward(self, x):
        return self.head(self.convs(x))


class TinyConv(Family):
    Params = TinyConvParams
    width_param, depth_param = "channels", "layers"
    static_int8_unsupported = None

    def build(self, input_shape, num_classes, params):
        return TinyConvNet(input_shape, num_classes, params)

    def search_space(self):
        return {"channels": [4, 8]}

    def student_overrides(self):
        return {"channels": 2}

    def prunable(self, model):
        return weight_matrices(model)

    def pruning_units(self, model):
        return [OutputUnits(m) for m in model.convs if isinstance(m, nn.Conv1d)]

    def compact(self, model, spec, keep):
        new_spec = ModelSpec(spec.family, spec.input_shape, spec.num_classes, {**spec.hparams, "channels": len(keep[0])})
        new = build_model(new_spec)
        convs = [(old, conv) for old, conv in zip(model.convs, new.convs, strict=True) if isinstance(old, nn.Conv1d)]
        prev = None
        with torch.no_grad():
            for (old, conv), kept in zip(convs, keep, strict=True):
                conv.weight.copy_(old.weight[kept] if prev is None else old.weight[kept][:, prev])
                conv.bias.copy_(old.bias[kept])
                prev = kept
            old_head, head = model.head[-1], new.head[-1]
            head.weight.copy_(old_head.weight.view(spec.num_classes, convs[-1][0].out_channels, -1)[:, prev]
                              .reshape(spec.num_classes, -1))
            head.bias.copy_(old_head.bias)
        return new, new_spec, {}

    def fusion_groups(self, model):
        return [[f"convs.{i}", f"convs.{i + 1}"] for i in range(0, len(model.convs), 2)]


class BareParams(FamilyParams):
    hidden: int = Field(16, ge=1)


class Bare(Family):
    """Params and a model, nothing else."""

    Params = BareParams

    def build(self, input_shape, num_classes, params):
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), params.hidden), nn.ReLU(),
                             nn.Linear(params.hidden, num_classes))


@pytest.fixture
def plugins(monkeypatch):
    """Both test families registered for this test only (the built-ins first, as always)."""
    registry.families()  # the built-ins register on the first look-up: before the registry is copied
    monkeypatch.setattr(registry._FAMILIES, "_items", dict(registry._FAMILIES._items))
    register_family("tinyconv")(TinyConv)
    register_family("bare")(Bare)


FAST = {"evaluate.energy_rounds": 2, "evaluate.energy_min_duration_s": 0.05, "evaluate.latency_samples": 5}


def _raw(family: str, **overrides) -> dict:
    raw = tiny_raw(**FAST, **overrides)
    raw["families"] = [family]
    return raw


def _runs(params, family: str):
    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    return client.search_runs([exp.experiment_id], f"tags.family = '{family}'")


def test_a_registered_family_runs_through_every_stage(plugins, workdir, meter):
    raw = _raw("tinyconv", **{"models.tinyconv": {"channels": 8}})
    params = parse_params(raw)
    assert params.tune.space.for_family("tinyconv") == {"channels": [4, 8]}  # the family's own space
    assert params.compress.distill.student.for_family("tinyconv") == {"channels": 2}
    assert scaled_hparams(params, "tinyconv", 2, 3) == {"channels": 16, "layers": 3}
    prepared = prepare(params)
    save(prepared, "mnist1d")

    trained = train_family(params, "tinyconv", meter, prepared)
    assert trained["flops_per_sample_inference"] > 0 and trained["params"] > 0
    tuned = tune_family(params, "tinyconv", meter, prepared)
    assert tuned["trials"] == 2
    for variant in (paths.BASELINE, paths.TUNED):
        assert 0 <= evaluate_family(params, "tinyconv", variant, meter)["test_acc"] <= 1
    m = compress_family(params, "tinyconv", meter=meter, prepared=prepared)
    assert m["skipped"] == {}
    assert set(m["variants"]) == {"quant_dynamic-int8", "quant_static-int8", "prune_global-0.5", "prune_structured-0.5",
                                  "distill-tinyconv_channels2", "scratch-tinyconv_channels2"}
    structured = m["variants"]["prune_structured-0.5"]
    assert (structured["units_before"], structured["units_after"]) == (8, 4)
    assert structured["params_total"] < m["reference"]["params_total"]

    for path in (paths.train_metrics("tinyconv"), paths.tune_metrics("tinyconv"),
                 paths.evaluate_metrics("tinyconv", paths.BASELINE), paths.evaluate_metrics("tinyconv", paths.TUNED)):
        assert json.loads(path.read_text())
    assert json.loads(paths.compress_metrics("tinyconv").read_text())["family"] == "tinyconv"
    assert json.loads((paths.model_dir("tinyconv") / "run.json").read_text())["family"] == "tinyconv"

    runs = _runs(params, "tinyconv")
    assert {"train", "tune", "evaluate", "compress"} <= {r.data.tags["stage"] for r in runs}
    assert {"study", "trial", "refit"} <= {r.data.tags.get("role") for r in runs}

    cmp = load(params, Filters(families=["tinyconv"]))
    assert {r["family"] for r in cmp.rows} == {"tinyconv"}
    assert {"train", "tune", "compress"} <= {r["stage"] for r in cmp.rows}
    written = write_outputs(cmp, workdir / "reports")
    assert "tinyconv" in written["markdown"].read_text()
    assert {r["family"] for r in load_rows(params)} == {"tinyconv"}
    assert "tinyconv" in compression_section(params, workdir / "reports")


def test_what_a_family_does_not_declare_is_skipped_with_the_reason(plugins, workdir, meter):
    params = parse_params(_raw("bare", **{"train.max_epochs": 1}))
    assert params.tune.space.for_family("bare") == {}  # the search would tune train.* alone
    with pytest.raises(ParamsError, match=r"sweep\.families\.0: family 'bare' cannot be swept: it declares no size"):
        parse_params(_raw("bare", **{"sweep.families": ["bare"]}))
    with pytest.raises(ParamsError, match="cannot be swept"):
        scaled_hparams(params, "bare", 2, 1)
    prepared = prepare(params)
    save(prepared, "mnist1d")
    train_family(params, "bare", meter, prepared)

    m = compress_family(params, "bare", meter=meter, prepared=prepared)
    assert set(m["variants"]) == {"quant_dynamic-int8"}  # dynamic int8 needs nothing from the family
    skipped = json.loads(paths.compress_metrics("bare").read_text())["skipped"]
    assert skipped.keys() == {"quant_static-int8", "prune_global-0.5", "prune_structured-0.5", "distill-bare",
                              "scratch-bare"}
    assert "declares no static int8" in skipped["quant_static-int8"]
    assert "no prunable weights" in skipped["prune_global-0.5"]
    assert "no structured-pruning units" in skipped["prune_structured-0.5"]
    assert "no student for family 'bare'" in skipped["distill-bare"] and skipped["scratch-bare"] == skipped["distill-bare"]


def test_registration_checks_what_the_family_declares(plugins):
    with pytest.raises(ParamsError, match=r"families\.0: unknown model family 'nope'; known: mlp, cnn, rnn, transformer, "
                                          r"tinyconv, bare"):
        parse_params(tiny_raw(families=["nope"]))
    with pytest.raises(ValueError, match="already registered"):
        register_family("tinyconv")(TinyConv)
    with pytest.raises(ValueError, match="family name 'train'"):
        register_family("train")  # would collide with tune.space.train

    class NoDefault(FamilyParams):
        width: int

    class Incomplete(Bare):
        Params = NoDefault

    with pytest.raises(TypeError, match="every field of Params needs a default"):
        register_family("incomplete")(Incomplete)
    with pytest.raises(ParamsError, match=r"models\.bare\.hidden"):
        parse_params(tiny_raw(**{"models.bare": {"hidden": 0}}))


def test_no_code_outside_a_family_module_names_a_family():
    """What the pipeline knows about a family lives in that family's module: no other module
    holds a built-in family's name as a string, a name or an attribute (family.py may import the
    built-in modules, which registers them)."""
    import ast

    from .conftest import ROOT

    builtins = {"mlp", "cnn", "rnn", "transformer"}
    found = []
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in {f"pipeline/models/{name}.py" for name in builtins}:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if rel == "pipeline/models/family.py" and isinstance(node, (ast.alias, ast.Name)):
                continue  # the import of the built-in modules, and their order
            words = set()
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words = set(node.value.replace("-", " ").replace("_", " ").replace(".", " ").split())
            elif isinstance(node, ast.Name):
                words = {node.id}
            elif isinstance(node, ast.Attribute):
                words = {node.attr}
            elif isinstance(node, ast.alias):
                words = {node.asname or node.name.split(".")[-1]}
            if words & builtins:
                found.append(f"{rel}:{getattr(node, 'lineno', '?')}: {sorted(words & builtins)}")
    assert not found, "\n".join(found)

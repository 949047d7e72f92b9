"""The compress stage: quantization, pruning, distillation; its params, outputs and tracking."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipeline import paths
from pipeline.compression import prune as P
from pipeline.compression.artifact import load_variant, save_variant
from pipeline.compression.compress import compress_family
from pipeline.compression.distill import DistillClassifier, distillation_loss, student_name, student_spec
from pipeline.compression.finetune import fit_module, train_cfg
from pipeline.compression.quantize import quantize_dynamic, quantize_static, static_unsupported_reason
from pipeline.compression.summary import ENERGY_PLOT, SIZE_PLOT, compression_section
from pipeline.config import ParamsError, parse_params
from pipeline.data.prepare import prepare, save
from pipeline.evaluation.evaluate import load_trained
from pipeline.models.factory import ModelSpec, build_model
from pipeline.models.family import families, get_family, weight_matrices
from pipeline.tracking import client_for
from pipeline.training.data import Batches, split_tensors
from pipeline.training.train import train_family

from .conftest import make_dvc_repo, shared_warm, tiny_raw

FAMILIES = ["mlp", "cnn", "rnn", "transformer"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, meter):
    """Tiny models of every family, trained once for the module (a few seconds in all)."""
    d = tmp_path_factory.mktemp("compress")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "MLFLOW_TRACKING_URI"):
            mp.delenv(var, raising=False)
        mp.chdir(d)
        params = parse_params(tiny_raw())
        prepared = prepare(params)
        save(prepared, "mnist1d")
        for family in FAMILIES:
            train_family(params, family, meter, prepared)
        yield d, params, prepared


@pytest.fixture
def in_trained(trained, monkeypatch):
    d, params, prepared = trained
    monkeypatch.chdir(d)
    return params, prepared


def _test_split(prepared):
    return split_tensors(prepared, "test")


@torch.inference_mode()
def _pred(model, x):
    return model(x).argmax(1)


def _varied(pred) -> torch.Tensor:
    """``pred`` after checking that no class takes 85% of it (the tiny trained models: at most
    69%, measured for base.seed 7, 1, 2), so that 90% agreement with it cannot come from a model
    that predicts one class."""
    share = torch.bincount(pred).max().item() / len(pred)
    assert share < 0.85, f"the model predicts one class for {share:.0%} of the test split"
    return pred


def expected_variants(params, family: str) -> tuple[set[str], set[str]]:
    """(made, skipped): the variant names params.compress asks of ``family``'s trained model,
    split by what the families declare (``static_int8_unsupported``, ``prunable``,
    ``pruning_units``): the stage must make the first set and skip the second, with a reason."""
    c, fam = params.compress, get_family(family)
    teacher, _, _ = load_trained(family)
    made, skipped, bases = set(), set(), []

    def static_ok(f):
        return get_family(f).static_int8_unsupported is None

    if "quantize" in c.techniques:
        for mode in c.quantize.modes:
            (made if mode == "dynamic" or static_ok(family) else skipped).add(f"quant_{mode}-int8")
    if "prune" in c.techniques:
        declared = {"global": bool(fam.prunable(teacher)), "structured": bool(fam.pruning_units(teacher))}
        for kind in c.prune.kinds:
            for sparsity in c.prune.sparsity:
                name = f"prune_{kind}-{sparsity:g}"
                (made if declared[kind] else skipped).add(name)
                if kind == "structured" and declared[kind] and "prune" in c.quantize.stack:
                    bases.append((name, family))
    if "distill" in c.techniques:
        s_family = family if c.distill.student_family == "same" else c.distill.student_family
        student = student_name(s_family, c.distill.student.for_family(s_family))
        for technique in ("distill", "scratch"):
            made.add(f"{technique}-{student}")
            if "distill" in c.quantize.stack:
                bases.append((f"{technique}-{student}", s_family))
    for base, base_family in bases:
        for mode in c.quantize.modes:
            (made if mode == "dynamic" or static_ok(base_family) else skipped).add(f"{base}+quant_{mode}-int8")
    return made, skipped


# -- quantization ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_dynamic_quantization_agrees_with_the_original(in_trained, family):
    """Dynamic int8 of every family predicts like its float model on >= 90% of the test split
    (a float model whose predictions vary, so a constant int8 model would fail)."""
    params, prepared = in_trained
    model, _, _ = load_trained(family)
    x, _ = _test_split(prepared)
    q = quantize_dynamic(model, family)
    assert (_pred(q, x) == _varied(_pred(model, x))).float().mean() >= 0.9


@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_static_quantization_agrees_and_reloads(in_trained, family, tmp_path):
    """Static int8 (mlp, cnn) is a quantized model that predicts like its float model on >= 90%
    of the test split, and predicts the same after save and load."""
    params, prepared = in_trained
    model, spec, _ = load_trained(family)
    x, _ = _test_split(prepared)
    calib = [split_tensors(prepared, "train")[0][i:i + 64] for i in range(0, 256, 64)]
    q = quantize_static(model, family, calib, "x86")
    assert "Quantized" in repr(q)
    assert (_pred(q, x) == _varied(_pred(model, x))).float().mean() >= 0.9
    save_variant(tmp_path, q, spec, {"quantization": "static", "engine": "x86"})
    loaded, _, _ = load_variant(tmp_path)
    assert torch.equal(_pred(loaded, x), _pred(q, x))


def test_static_quantization_says_why_it_skips_rnn_and_transformer():
    """The reason static int8 is skipped is the one each family declares (none for mlp and cnn),
    and static quantization of a family that declares one refuses with that reason."""
    for family in families():
        assert static_unsupported_reason(family) == get_family(family).static_int8_unsupported
    assert static_unsupported_reason("mlp") is None and static_unsupported_reason("cnn") is None
    assert "GRU/LSTM" in static_unsupported_reason("rnn")
    assert "attention" in static_unsupported_reason("transformer")
    for family, hparams in (("rnn", {"hidden_size": 8}), ("transformer", {"d_model": 8, "num_heads": 2})):
        model = build_model(ModelSpec(family, (1, 40), 10, hparams))
        with pytest.raises(ValueError) as err:
            quantize_static(model, family, [torch.randn(8, 1, 40)], "x86")
        assert str(err.value) == get_family(family).static_int8_unsupported


# -- pruning -------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_global_pruning_reaches_the_sparsity_and_stays_after_save_and_load(in_trained, family, tmp_path):
    params, prepared = in_trained
    model, spec, _ = load_trained(family)
    state = P.prune_global(model, 0.6)
    P.make_permanent(state)
    assert P.weight_sparsity(state.model) == pytest.approx(0.6, abs=1e-3)
    save_variant(tmp_path, state.model, spec, {})
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert not any(k.endswith(("_orig", "_mask")) for k in saved)  # permanent: no masks, plain weights
    loaded, _, _ = load_variant(tmp_path)
    assert P.weight_sparsity(loaded) == pytest.approx(0.6, abs=1e-3)
    assert not any(m._forward_pre_hooks for m in loaded.modules())
    x, _ = _test_split(prepared)
    assert torch.equal(_pred(loaded, x), _pred(state.model.eval(), x))


@pytest.mark.parametrize("family", FAMILIES)
def test_fine_tuning_keeps_pruned_weights_at_zero(in_trained, family):
    params, prepared = in_trained
    model, spec, _ = load_trained(family)
    state = P.prune_global(model, 0.7)
    from pipeline.training.data import TensorBatches
    from pipeline.training.module import Classifier

    before = [t.clone() for t in (getattr(m, n) for m, n in weight_matrices(state.model))]
    module = Classifier(state.model, spec.num_classes, train_cfg(0.01, 64, 1))
    torch.use_deterministic_algorithms(False)  # whatever earlier training in this process left
    fit_module(module, TensorBatches(*split_tensors(prepared, "train"), 64, shuffle=True, seed=1),
               TensorBatches(*split_tensors(prepared, "val"), 256, shuffle=False), 1, seed=1)
    # Lightning's deterministic="warn" is given back: later int8 inference would warn on every call
    assert not torch.are_deterministic_algorithms_enabled()
    P.make_permanent(state)
    after = [getattr(m, n) for m, n in weight_matrices(state.model)]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # it did train
    assert P.weight_sparsity(state.model) == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize("family, hparams", [
    ("mlp", {"width": 32, "depth": 3, "dropout": 0.1}),
    ("cnn", {"channels": 8, "depth": 3, "kernel_size": 5, "dropout": 0.1}),
    ("rnn", {"cell": "gru", "hidden_size": 16, "num_layers": 2, "bidirectional": True, "dropout": 0.0}),
    ("rnn", {"cell": "lstm", "hidden_size": 16, "num_layers": 1, "bidirectional": False, "dropout": 0.0}),
    ("transformer", {"d_model": 16, "num_heads": 2, "num_layers": 2, "ff_mult": 2, "patch_size": 4}),
])
@pytest.mark.parametrize("shape", [(1, 40), (1, 8, 8)])
def test_structured_pruning_removes_units_exactly(family, hparams, shape, tmp_path):
    """Structured pruning at 0.5 keeps exactly half the units of every unit group the family
    declares (every layer and direction of a GRU/LSTM), and the compacted model, saved and
    reloaded, computes what the masked one did, with fewer parameters."""
    from pipeline.models.family import RecurrentUnits

    spec = ModelSpec(family, shape, 10, hparams)
    torch.manual_seed(0)
    model = build_model(spec)
    model(torch.randn(32, *shape))  # BatchNorm statistics that are not the identity
    model.eval()
    x = torch.randn(20, *shape)
    state = P.prune_structured(model, family, 0.5)
    sizes = []
    for u in get_family(family).pruning_units(model):
        if isinstance(u, RecurrentUnits):
            sizes += [u.layer.hidden_size] * (u.layer.num_layers * (2 if u.layer.bidirectional else 1))
        else:
            sizes.append(u.layer.weight.shape[0])
    assert [len(k) for k in state.keep] == [n // 2 for n in sizes]  # every size here is even
    assert all(len(torch.unique(k)) == len(k) and int(k.max()) < n for k, n in zip(state.keep, sizes, strict=True))
    with torch.no_grad():
        masked = state.model.eval()(x)
    P.make_permanent(state)
    small, small_spec, extra = P.compact(state, spec)
    save_variant(tmp_path, small, small_spec, extra)
    loaded, _, _ = load_variant(tmp_path)
    with torch.no_grad():
        assert torch.allclose(loaded(x), masked, atol=1e-5)
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in model.parameters())


# -- distillation --------------------------------------------------------------------------------

def test_distillation_loss_uses_the_teacher_and_temperature():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    hard = distillation_loss(s, None, y, 4.0, 0.7)
    assert torch.allclose(hard, torch.nn.functional.cross_entropy(s, y))
    with_t = distillation_loss(s, t, y, 4.0, 0.7)
    assert not torch.allclose(with_t, distillation_loss(s, torch.zeros_like(t), y, 4.0, 0.7))
    assert not torch.allclose(with_t, distillation_loss(s, t, y, 1.0, 0.7))
    assert torch.allclose(distillation_loss(s, t, y, 4.0, 0.0), hard)
    assert distillation_loss(t, t, y, 4.0, 1.0).abs() < 1e-6  # a student equal to its teacher: no soft loss


def _distill(prepared, teacher_logits, seed=3):
    x, y = split_tensors(prepared, "train")
    spec = ModelSpec("mlp", (1, 40), 10, {"width": 8, "depth": 1, "dropout": 0.0})
    torch.manual_seed(seed)
    student = build_model(spec)
    module = DistillClassifier(student, 10, train_cfg(0.01, 64, 1), temperature=2.0, alpha=0.9)
    tensors = (x, y) if teacher_logits is None else (x, y, teacher_logits)
    history = fit_module(module, Batches(tensors, 64, shuffle=True, seed=seed),
                         Batches(split_tensors(prepared, "val"), 256, shuffle=False), 1, seed)
    return torch.cat([p.detach().flatten() for p in student.parameters()]), history[0]["train/loss"]


def test_a_constant_teacher_changes_the_distilled_student(in_trained):
    params, prepared = in_trained
    teacher, _, _ = load_trained("cnn")
    x, _ = split_tensors(prepared, "train")
    with torch.inference_mode():
        real = teacher(x)
    w_real, loss_real = _distill(prepared, real)
    w_again, loss_again = _distill(prepared, real)
    w_const, loss_const = _distill(prepared, torch.ones_like(real))
    assert torch.equal(w_real, w_again) and loss_real == loss_again  # seeded: the difference is the teacher's
    assert not torch.equal(w_real, w_const) and loss_real != loss_const


def test_student_must_be_smaller_than_the_teacher():
    teacher = ModelSpec("mlp", (1, 40), 10, {"width": 32, "depth": 1, "dropout": 0.1})
    n = sum(p.numel() for p in build_model(teacher).parameters())
    assert student_spec(teacher, "same", {"width": 8}, n).hparams["width"] == 8
    with pytest.raises(ParamsError, match=r"compress\.distill\.student\.mlp.*not fewer"):
        student_spec(teacher, "same", {"width": 64}, n)
    other = student_spec(teacher, "cnn", {"channels": 2, "depth": 1}, n)
    assert other.family == "cnn"


# -- params --------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ({"techniques": ["quantise"]}, "compress.techniques.0"),
    ({"techniques": ["prune", "prune"]}, "compress.techniques"),
    ({"quantize": {"modes": ["float16"]}}, "compress.quantize.modes.0"),
    ({"quantize": {"stack": ["quantize"]}}, "compress.quantize.stack.0"),
    ({"prune": {"sparsity": [0.5, 1.0]}}, "compress.prune.sparsity.1"),
    ({"prune": {"sparsity": [0]}}, "compress.prune.sparsity.0"),
    ({"prune": {"kinds": ["channel"]}}, "compress.prune.kinds.0"),
    ({"prune": {"finetune_epochs": -1}}, "compress.prune.finetune_epochs"),
    ({"distill": {"temperature": 0}}, "compress.distill.temperature"),
    ({"distill": {"alpha": 1.5}}, "compress.distill.alpha"),
    ({"distill": {"student_family": "resnet"}}, "compress.distill.student_family"),
    ({"distill": {"student": {"mlp": {"widht": 8}}}}, "compress.distill.student: mlp.widht"),
    ({"distill": {"student": {"cnn": {"channels": -1}}}}, "compress.distill.student: cnn.channels"),
    ({"sources": []}, "compress.sources"),
    ({"sourcez": ["baseline"]}, "compress.sourcez: unknown key"),
])
def test_bad_compress_params_name_the_key(override, key):
    raw = tiny_raw()
    raw["compress"] = override
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert key in str(err.value)


def test_cli_exits_2_on_a_bad_level(workdir):
    (workdir / "params.yaml").write_text("compress:\n  prune:\n    sparsity: [1.5]\n")
    out = subprocess.run([sys.executable, "-m", "pipeline", "compress", "--family", "mlp"], cwd=workdir,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "compress.prune.sparsity.0" in out.stderr and "Traceback" not in out.stderr


# -- the stage -----------------------------------------------------------------------------------

REQUIRED = {"test_acc", "test_f1_macro", "acc_delta", "params_total", "params_nonzero", "size_bytes",
            "latency_ms_per_sample", "throughput_per_s", "energy_per_1k_j", "compress_energy_j", "energy_ratio",
            "energy_ratio_q1", "energy_ratio_q3", "energy_rounds", "inference_threads"}


def test_compress_stage_measures_and_tracks_every_variant(in_trained, meter):
    """compress on the cnn makes every variant params and the family declare (none skipped),
    measures each like evaluate in the reference's energy rounds, writes metrics/compress, and
    tracks one FINISHED run per variant whose energy and accuracy are the ones reported."""
    params, prepared = in_trained
    m = compress_family(params, "cnn", meter=meter, prepared=prepared)
    names = {"quant_dynamic-int8", "quant_static-int8", "prune_global-0.5", "prune_structured-0.5",
             "distill-cnn_channels4", "scratch-cnn_channels4"}
    assert expected_variants(params, "cnn") == (names, set())  # what params and the cnn family declare
    assert set(m["variants"]) == names and m["skipped"] == {}
    written = json.loads(paths.compress_metrics("cnn").read_text())
    assert set(written["variants"]) == names and written["reference"]["energy_per_1k_j"] > 0
    for name, v in m["variants"].items():
        assert REQUIRED <= set(v), (name, REQUIRED - set(v))
        assert v["compress_energy_j"] > 0  # measured, never a placeholder zero
        assert ("payback_predictions" in v) != ("payback" in v)
        assert (paths.compressed_dir("cnn") / name / "model.pt").is_file()
        # every model measured in the same rounds as the reference, with the configured threads
        assert v["energy_rounds"] == params.evaluate.energy_rounds == written["reference"]["energy_rounds"]
        assert v["inference_threads"] == params.evaluate.num_threads
        assert v["energy_ratio_q1"] <= v["energy_ratio"] <= v["energy_ratio_q3"]
        assert v["acc_delta"] == pytest.approx(v["test_acc"] - m["reference"]["test_acc"])
    assert m["variants"]["prune_global-0.5"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert m["variants"]["prune_global-0.5"]["params_nonzero"] < m["reference"]["params_nonzero"]
    assert m["variants"]["prune_structured-0.5"]["params_total"] < m["reference"]["params_total"]
    assert m["variants"]["quant_dynamic-int8"]["flops_note"].startswith("not countable")
    assert m["variants"]["quant_static-int8"]["size_bytes"] < m["reference"]["size_bytes"]

    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'compress' and tags.family = 'cnn'")
    assert {r.data.tags["variant"] for r in runs} == names
    source_run = json.loads((paths.model_dir("cnn") / "run.json").read_text())["run_id"]
    for r in runs:
        tags, metrics = r.data.tags, r.data.metrics
        assert r.info.status == "FINISHED"
        assert tags["source_run_id"] == source_run and tags["variant"] == f"{tags['technique']}-{tags['level']}"
        assert {"data_hash", "git_commit", "energy_method"} <= set(tags)
        assert tags["inference_device"] == "cpu"  # where its test figures were measured
        for key in ("test/acc", "test/f1_macro", "test/energy_per_1k_j", "test/latency_ms_per_sample",
                    "test/throughput_per_s", "test/acc_delta", "model/params_total", "model/params_nonzero",
                    "model/size_bytes", "energy/total_j", "energy/total_kwh", "energy/emissions_kg",
                    "energy/duration_s"):
            assert key in metrics, (tags["variant"], key)
        variant = m["variants"][tags["variant"]]
        assert metrics["energy/total_j"] == pytest.approx(variant["compress_energy_j"])  # the same measurement
        assert metrics["test/acc"] == pytest.approx(variant["test_acc"])
        assert "model/model.pt" in {a.path for a in client.list_artifacts(r.info.run_id, "model")}

    section = compression_section(params, Path("reports"))
    assert section.startswith("## Compression") and "pay-back" in section and "prune_structured-0.5" in section
    assert "dense CPU kernels multiply the zeros" in section
    # The energy sentence names the method the variants were measured with, taken from their rows.
    assert m["energy_method"] and f"(method: `{m['energy_method']}`)" in section
    for png in (ENERGY_PLOT, SIZE_PLOT):
        assert (Path("reports") / png).stat().st_size > 5000


def test_no_compress_metrics_no_section(workdir, tiny_params):
    assert compression_section(tiny_params(), workdir / "reports") == ""
    assert not (workdir / "reports").exists()


def test_static_quantization_is_skipped_for_rnn_with_the_reason(in_trained, meter):
    """For the rnn, the stage makes the dynamic int8 variant and skips the static one with the
    reason the rnn family declares."""
    params, prepared = in_trained
    params = parse_params(tiny_raw(**{"compress.techniques": ["quantize"]}))
    m = compress_family(params, "rnn", meter=meter, prepared=prepared)
    assert expected_variants(params, "rnn") == ({"quant_dynamic-int8"}, {"quant_static-int8"})
    assert set(m["variants"]) == {"quant_dynamic-int8"} and set(m["skipped"]) == {"quant_static-int8"}
    assert m["skipped"]["quant_static-int8"] == get_family("rnn").static_int8_unsupported
    assert "GRU/LSTM" in m["skipped"]["quant_static-int8"]
    assert m["variants"]["quant_dynamic-int8"]["agreement_with_source"] >= 0.9


def test_stacked_quantization_quantizes_pruned_models_and_students(in_trained, meter):
    """quantize.stack: the structured-pruned model and both students are int8-quantized too; the
    stacked variant carries both costs, reloads from disk and predicts like the model it quantizes."""
    _, prepared = in_trained
    params = parse_params(tiny_raw(**{"compress.techniques": ["prune", "distill"], "compress.quantize.modes": ["static"],
                                      "compress.quantize.stack": ["prune", "distill"],
                                      "compress.prune.kinds": ["structured"]}))
    m = compress_family(params, "mlp", meter=meter, prepared=prepared)
    bases = ["prune_structured-0.5", "distill-mlp_width8", "scratch-mlp_width8"]
    assert set(m["variants"]) == set(bases) | {f"{b}+quant_static-int8" for b in bases} and m["skipped"] == {}
    assert expected_variants(params, "mlp") == (set(m["variants"]), set())
    x, _ = _test_split(prepared)
    for base in bases:
        stacked, plain = m["variants"][f"{base}+quant_static-int8"], m["variants"][base]
        assert stacked["compress_energy_j"] > plain["compress_energy_j"]  # the base's cost is included
        assert stacked["params_total"] == plain["params_total"]  # (tiny models: int8's scales outweigh the bytes saved)
        q_model, _, recipe = load_variant(paths.compressed_dir("mlp") / f"{base}+quant_static-int8")
        f_model, _, _ = load_variant(paths.compressed_dir("mlp") / base)
        assert recipe["quantization"] == "static"
        assert (_pred(q_model, x) == _varied(_pred(f_model, x))).float().mean() >= 0.9
    client, _ = client_for(params.tracking)
    exp = client.get_experiment_by_name(params.tracking.experiment_name)
    (run,) = client.search_runs([exp.experiment_id], "tags.variant = 'prune_structured-0.5+quant_static-int8'")
    assert run.data.tags["technique"] == "prune_structured+quant_static" and run.data.tags["level"] == "0.5+int8"

    m = compress_family(params, "rnn", meter=meter, prepared=prepared)  # no static int8 for GRU
    assert set(m["variants"]) == {"prune_structured-0.5", "distill-rnn_hidden_size8", "scratch-rnn_hidden_size8"}
    assert expected_variants(params, "rnn") == (set(m["variants"]), set(m["skipped"]))
    assert set(m["skipped"].values()) == {get_family("rnn").static_int8_unsupported}
    assert "GRU/LSTM" in m["skipped"]["prune_structured-0.5+quant_static-int8"]


def test_missing_source_model_says_what_to_run(workdir, tiny_params):
    p = tiny_params()
    save(prepare(p), "mnist1d")
    (workdir / "params.yaml").write_text(yaml.safe_dump(tiny_raw()))
    out = subprocess.run([sys.executable, "-m", "pipeline", "compress", "--family", "mlp", "--source", "tuned"],
                         cwd=workdir, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert out.returncode == 2 and "python -m pipeline tune --family mlp" in out.stderr


# -- DVC: reruns only when its params or its model change -----------------------------------------

def _sh(cmd, cwd, env):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.mark.slow
def test_dvc_reruns_compress_only_when_its_params_or_model_change(tmp_path):
    d = tmp_path
    raw = tiny_raw(**{"compress.techniques": ["prune"], "compress.prune.kinds": ["global"]})
    raw["families"] = ["mlp"]
    env, _ = make_dvc_repo(d, raw)
    env.update(shared_warm())
    stage = "compress@mlp-baseline"
    first = _sh(["dvc", "repro", stage], d, env)
    assert f"Running stage '{stage}'" in first and "Running stage 'train@mlp'" in first
    assert json.loads((d / "metrics/compress/mlp-baseline.json").read_text())["variants"]

    def changed() -> set:
        """The stages to rerun once the fingerprints (params read, code) are written again."""
        _sh(["dvc", "repro", "fingerprints"], d, env)
        return set(json.loads(_sh(["dvc", "status", "--json", stage], d, env) or "{}"))

    def edit(dotted, value):
        params = yaml.safe_load((d / "params.yaml").read_text())
        node = params
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        old, node[leaf] = node[leaf], value
        (d / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return old

    assert changed() == set()
    # Params the stage does not read leave it alone.
    old = edit("tune.search.n_trials", 7)
    assert changed() == set()
    edit("tune.search.n_trials", old)
    # Its own params rerun it.
    old = edit("compress.prune.sparsity", [0.3])
    assert stage in changed()
    edit("compress.prune.sparsity", old)
    assert changed() == set()
    # A new source model reruns it: training with another lr changes models/mlp/baseline.
    edit("train.lr", 0.01)
    assert changed() == set()  # train.lr is not the stage's: nothing until its model changes
    assert "train@mlp" in json.loads(_sh(["dvc", "status", "--json", "train@mlp"], d, env))
    _sh(["dvc", "repro", "train@mlp"], d, env)
    assert stage in changed()

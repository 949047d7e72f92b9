"""The ``compress`` stage: turn one trained model into variants (int8 quantization, pruning,
distillation) and measure each exactly like the evaluate stage measures the originals.

For every variant: test accuracy and macro-F1 and their change against the source model,
parameters (total and non-zero), size on disk, latency per sample, throughput and energy per
1,000 predictions, FLOPs per sample where countable, and the energy the compression itself spent
(quantizing and calibrating, fine-tuning, teacher outputs and student training), hence the number
of predictions after which it pays back. Once every variant is made, the source model and the
variants are measured for energy in the same rounds, alternating (``evaluate.energy_rounds``), and
each variant's energy ratio is the median of its per-round ratios to the source model, with their
quartiles: drift of the machine's speed between rounds hits both sides of every ratio.

Each variant is one MLflow run (tags ``stage=compress``, ``technique``, ``level``, ``variant``,
``source_run_id``) with the compressed model as its artifact; the stage writes
``models/<family>/compressed/<source>/<variant>/`` and ``metrics/compress/<family>-<source>.json``.
"""
from __future__ import annotations

import copy
import itertools
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pipeline import interrupts, paths
from pipeline.compression import measure
from pipeline.compression.artifact import load_variant, save_variant
from pipeline.compression.distill import DistillClassifier, student_name, student_spec
from pipeline.compression.finetune import fit_module, train_cfg
from pipeline.compression.prune import compact, make_permanent, prune_global, prune_structured, weight_sparsity
from pipeline.compression.quantize import (
    quantize_dynamic,
    quantize_static,
    quiet_torch_quantization,
    set_engine,
    static_unsupported_reason,
)
from pipeline.compute import resolve_eval_device
from pipeline.config import Params
from pipeline.data.prepare import Prepared, load_prepared
from pipeline.energy import EnergyMeter, EnergyReading
from pipeline.evaluation.evaluate import (
    InferenceMeasurement,
    Quality,
    energy_rounds,
    load_trained,
    measured_threads,
    quality,
    trained_on,
)
from pipeline.evaluation.inference_energy import (
    RoundReadings,
    allocator_setting,
    logits,
    model_device,
    paired_ratios,
    ratio_summary,
)
from pipeline.models.factory import ModelSpec
from pipeline.models.family import get_family
from pipeline.models.profile import count_parameters
from pipeline.tracking import Run, base_tags, client_for, tracked_run
from pipeline.training.data import Batches, TensorBatches, split_tensors
from pipeline.training.module import Classifier

QUANT_DYNAMIC, QUANT_STATIC = "quant_dynamic", "quant_static"
PRUNE_GLOBAL, PRUNE_STRUCTURED = "prune_global", "prune_structured"
DISTILL, SCRATCH = "distill", "scratch"  # scratch: the distillation's student trained from labels alone
TECHNIQUES = (QUANT_DYNAMIC, QUANT_STATIC, PRUNE_GLOBAL, PRUNE_STRUCTURED, DISTILL, SCRATCH)


@dataclass
class Built:
    """What a compression produced: the model to save, the float architecture it rebuilds from,
    how to rebuild it, and technique-specific facts (sparsity reached, training history)."""

    model: nn.Module
    spec: ModelSpec
    recipe: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    counts_from: nn.Module | None = None  # float model whose parameters a quantized model holds


@dataclass
class Plan:
    technique: str
    level: str
    build: Callable[[], Built]
    settings: dict = field(default_factory=dict)
    family: str = ""  # of the model it makes (a student may be of another family)
    base: str | None = None  # stacked: the variant it quantizes further (its cost is added)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or f"{self.technique}-{self.level}"


@dataclass
class Context:
    params: Params
    family: str
    source: str
    teacher: nn.Module
    spec: ModelSpec
    prepared: Prepared
    made: dict[str, tuple[Built, EnergyReading]] = field(default_factory=dict)  # by variant name

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        return split_tensors(self.prepared, split)

    def val_batches(self) -> TensorBatches:
        return TensorBatches(*self.tensors("val"), self.params.evaluate.batch_size, shuffle=False)


def _level(value: float) -> str:
    return f"{value:g}"


def _finetune(ctx: Context, model: nn.Module, epochs: int) -> list[dict]:
    cfg = ctx.params.compress
    if epochs <= 0:
        return []
    module = Classifier(model, ctx.spec.num_classes, train_cfg(cfg.prune.lr, cfg.batch_size, epochs))
    seed = ctx.params.base.seed
    history = fit_module(module, TensorBatches(*ctx.tensors("train"), cfg.batch_size, shuffle=True, seed=seed),
                         ctx.val_batches(), epochs, seed)
    model.eval()
    return history


def _calibration(ctx: Context) -> list[torch.Tensor]:
    """``calibration_batches`` shuffled training batches (never the test split)."""
    q = ctx.params.compress.quantize
    batches = TensorBatches(*ctx.tensors("train"), ctx.params.compress.batch_size, shuffle=True, seed=ctx.params.base.seed)
    return [b[0] for b in itertools.islice(batches, q.calibration_batches)]


def _quantized(ctx: Context, mode: str, model: nn.Module, spec: ModelSpec, recipe: dict | None = None,
               info: dict | None = None) -> Built:
    """An int8 copy of a float ``model`` (the source model, or a smaller one another technique made)."""
    q = ctx.params.compress.quantize
    set_engine(q.engine)
    recipe = {**(recipe or {}), "quantization": mode, "engine": q.engine}
    if mode == "dynamic":
        return Built(quantize_dynamic(model, spec.family), spec, recipe, dict(info or {}), counts_from=model)
    calib = _calibration(ctx)
    return Built(quantize_static(model, spec.family, calib, q.engine), spec, recipe,
                 {**(info or {}), "calibration_samples": sum(len(b) for b in calib)}, counts_from=model)


def _quant_technique(mode: str) -> str:
    return QUANT_DYNAMIC if mode == "dynamic" else QUANT_STATIC


def _quant_settings(ctx: Context, mode: str) -> dict:
    q = ctx.params.compress.quantize
    return {"engine": q.engine, **({"calibration_batches": q.calibration_batches} if mode == "static" else {})}


def _plan_quantize(ctx: Context, skipped: dict[str, str]) -> list[Plan]:
    plans = []
    for mode in ctx.params.compress.quantize.modes:
        technique = _quant_technique(mode)
        reason = static_unsupported_reason(ctx.family) if mode == "static" else None
        if reason:
            skipped[f"{technique}-int8"] = reason
            continue
        plans.append(Plan(technique, "int8", lambda mode=mode: _quantized(ctx, mode, ctx.teacher, ctx.spec),
                          _quant_settings(ctx, mode), ctx.family))
    return plans


_STACKS = {"prune": (PRUNE_STRUCTURED,), "distill": (DISTILL, SCRATCH)}


def _plan_stacked(ctx: Context, plans: list[Plan], skipped: dict[str, str]) -> list[Plan]:
    """``quantize.stack``: each structured-pruned model / student quantized further."""
    q = ctx.params.compress.quantize
    techniques = {t for key in q.stack for t in _STACKS[key]}
    out = []
    for base in (p for p in plans if p.technique in techniques):
        for mode in q.modes:
            technique = _quant_technique(mode)
            label = f"{base.name}+{technique}-int8"
            reason = static_unsupported_reason(base.family) if mode == "static" else None
            if reason:
                skipped[label] = reason
                continue

            def build(base=base.name, mode=mode) -> Built:
                made, _ = ctx.made[base]
                return _quantized(ctx, mode, made.model, made.spec, made.recipe, made.info)

            out.append(Plan(f"{base.technique}+{technique}", f"{base.level}+int8", build,
                            {**base.settings, **_quant_settings(ctx, mode)}, base.family, base.name, label))
    return out


def _plan_prune(ctx: Context, skipped: dict[str, str]) -> list[Plan]:
    p = ctx.params.compress.prune
    family = get_family(ctx.family)
    # What the family lets pruning touch; a kind it declares nothing for is skipped.
    reasons = {"global": None if family.prunable(ctx.teacher) else
               f"family {ctx.family!r} declares no prunable weights (Family.prunable)",
               "structured": None if family.pruning_units(ctx.teacher) else
               f"family {ctx.family!r} declares no structured-pruning units (Family.pruning_units)"}
    plans = []
    for kind in p.kinds:
        technique = PRUNE_GLOBAL if kind == "global" else PRUNE_STRUCTURED
        for sparsity in p.sparsity:
            if reasons[kind]:
                skipped[f"{technique}-{_level(sparsity)}"] = reasons[kind]
                continue

            def build(kind=kind, sparsity=sparsity) -> Built:
                if kind == "global":
                    state = prune_global(ctx.teacher, sparsity, family.prunable)
                else:
                    state = prune_structured(ctx.teacher, ctx.family, sparsity)
                history = _finetune(ctx, state.model, p.finetune_epochs)
                make_permanent(state)
                if kind == "global":
                    return Built(state.model.eval(), ctx.spec, {},
                                 {"sparsity": weight_sparsity(state.model, family.prunable)}, history)
                model, spec, extra = compact(state, ctx.spec)
                kept = len(state.keep[0])
                return Built(model, spec, extra, {"units_before": state.units, "units_after": kept,
                                                  "units_removed_fraction": 1 - kept / state.units}, history)

            plans.append(Plan(technique, _level(sparsity), build,
                              {"sparsity": sparsity, "finetune_epochs": p.finetune_epochs, "lr": p.lr}, ctx.family))
    return plans


def _plan_distill(ctx: Context, skipped: dict[str, str]) -> list[Plan]:
    d = ctx.params.compress.distill
    family = ctx.family if d.student_family == "same" else d.student_family
    overrides = ctx.params.compress.distill.student.for_family(family)
    if not overrides:
        reason = (f"no student for family {family!r}: it declares no student_overrides() and "
                  f"compress.distill.student.{family} is empty")
        for technique in (DISTILL, SCRATCH):
            skipped[f"{technique}-{student_name(family, overrides)}"] = reason
        return []
    teacher_params = count_parameters(ctx.teacher).total
    s_spec = student_spec(ctx.spec, d.student_family, overrides, teacher_params)  # fails early, naming the key
    name = student_name(family, overrides)
    seed = ctx.params.base.seed
    bs = ctx.params.compress.batch_size

    def train_student(with_teacher: bool) -> Built:
        import lightning.pytorch as pl

        from pipeline.models.factory import build_model

        x, y = ctx.tensors("train")
        tensors: tuple[torch.Tensor, ...] = (x, y)
        if with_teacher:
            tensors = (x, y, logits(ctx.teacher.eval(), x, ctx.params.evaluate.batch_size))
        pl.seed_everything(seed, workers=True, verbose=False)  # the same initial student both times
        student = build_model(s_spec)
        module = DistillClassifier(student, s_spec.num_classes, train_cfg(d.lr, bs, d.epochs), d.temperature,
                                   d.alpha if with_teacher else 0.0)
        history = fit_module(module, Batches(tensors, bs, shuffle=True, seed=seed), ctx.val_batches(), d.epochs, seed)
        best = max((r.get("val/acc", float("-inf")) for r in history), default=None)
        return Built(student.eval(), s_spec, {"student": name}, {"student_val_acc": best}, history)

    settings = {"student_family": family, "student": s_spec.hparams, "epochs": d.epochs, "lr": d.lr, "batch_size": bs}
    return [
        Plan(DISTILL, name, lambda: train_student(True), {**settings, "temperature": d.temperature, "alpha": d.alpha},
             family),
        Plan(SCRATCH, name, lambda: train_student(False), settings, family),
    ]


def plan_variants(ctx: Context) -> tuple[list[Plan], dict[str, str]]:
    """The variants params.compress asks for, in order, and those skipped with the reason."""
    plans: list[Plan] = []
    skipped: dict[str, str] = {}
    for technique in ctx.params.compress.techniques:
        if technique == "quantize":
            plans += _plan_quantize(ctx, skipped)
        elif technique == "prune":
            plans += _plan_prune(ctx, skipped)
        elif technique == "distill":
            plans += _plan_distill(ctx, skipped)
    return plans + _plan_stacked(ctx, plans, skipped), skipped


REFERENCE = "original"  # the source model's key among the models measured together


def _quality(ctx: Context, model: nn.Module) -> Quality:
    x, _ = ctx.tensors("test")
    return quality(model, x, ctx.prepared.arrays["y_test"], ctx.spec.num_classes, ctx.params.evaluate)


def _measure_energy(ctx: Context, models: dict[str, nn.Module], meter: EnergyMeter) -> dict[str, RoundReadings]:
    """The source model and every variant, measured in the same interleaved rounds."""
    x, _ = ctx.tensors("test")
    ev = ctx.params.evaluate
    print(f"[{ctx.family}/{ctx.source}] measuring inference energy: {len(models)} models x {ev.energy_rounds} "
          f"rounds, {ev.energy_min_duration_s:g} s each, {measured_threads(ev)} thread(s)", flush=True)
    return energy_rounds(models, x, ev, meter)


def _size_figures(model: nn.Module, spec: ModelSpec, model_path: Path, quantized: bool,
                  counts_from: nn.Module | None) -> dict:
    counts = count_parameters(counts_from if quantized and counts_from is not None else model)
    flops, note = measure.inference_flops(model, spec, quantized)
    out = {"params_total": counts.total, "params_nonzero": counts.nonzero, "size_bytes": model_path.stat().st_size,
           "size_bytes_gzip": measure.gzip_size_bytes(model_path), "flops_per_sample_inference": flops,
           "flops_note": note}
    return out


def _reference(ctx: Context, m: InferenceMeasurement) -> dict:
    source_dir = paths.model_dir(ctx.family, ctx.source)
    ref = {k: v for k, v in m.metrics().items() if k != "energy_method"}
    ref.update(_size_figures(ctx.teacher, ctx.spec, source_dir / "model.pt", False, None))
    return ref


def _variant_metrics(m: InferenceMeasurement, ref: dict, ref_m: InferenceMeasurement, cost: EnergyReading,
                     sizes: dict, built: Built) -> dict:
    out = {k: v for k, v in m.metrics().items() if k != "energy_method"}
    ref_pred = ref_m.y_pred
    out["acc_delta"] = out["test_acc"] - ref["test_acc"]
    out["f1_delta"] = out["test_f1_macro"] - ref["test_f1_macro"]
    out["agreement_with_source"] = float((m.y_pred == ref_pred).mean())
    out["latency_ratio"] = out["latency_ms_per_sample"] / ref["latency_ms_per_sample"]
    out["throughput_ratio"] = out["throughput_per_s"] / ref["throughput_per_s"]
    out.update(sizes)
    out["size_ratio"] = sizes["size_bytes"] / ref["size_bytes"]
    out.update(built.info)
    out["compress_duration_s"] = cost.duration_s
    if cost.energy_j is not None:
        out["compress_energy_j"] = cost.energy_j
        out["compress_energy_kwh"] = cost.energy_kwh
        out["compress_emissions_kg"] = cost.emissions_kg
    e_var, e_ref = out.get("energy_per_1k_j"), ref.get("energy_per_1k_j")
    if e_var is not None and e_ref:
        out.update(ratio_summary(paired_ratios(m.rounds.per_1k_j(), ref_m.rounds.per_1k_j())))
        # what a prediction saves, by the paired ratio (the pooled energies carry the drift)
        ratio = out.get("energy_ratio", e_var / e_ref)
        saved_per_prediction = e_ref * (1 - ratio) / 1000
        if saved_per_prediction <= 0:
            out["payback"] = "never: no inference energy saved"
        elif out.get("energy_ratio_q3", ratio) >= 1:
            out["payback"] = "never: no saving beyond the noise (upper quartile of the energy ratio >= 1)"
        elif cost.energy_j is not None:
            out["payback_predictions"] = cost.energy_j / saved_per_prediction
    return out


_METRIC_NAMES = {
    "test_acc": "test/acc", "test_f1_macro": "test/f1_macro", "energy_per_1k_j": "test/energy_per_1k_j",
    "latency_ms_per_sample": "test/latency_ms_per_sample", "throughput_per_s": "test/throughput_per_s",
    "predictions_measured": "test/predictions_measured", "emissions_per_1k_kg": "test/emissions_per_1k_kg",
    "inference_mean_power_w": "test/inference_mean_power_w", "acc_delta": "test/acc_delta",
    "f1_delta": "test/f1_delta", "agreement_with_source": "test/agreement_with_source",
    "params_total": "model/params_total", "params_nonzero": "model/params_nonzero",
    "size_bytes": "model/size_bytes", "size_bytes_gzip": "model/size_bytes_gzip",
    "flops_per_sample_inference": "model/flops_per_sample_inference",
    "payback_predictions": "compress/payback_predictions", "energy_ratio": "compress/energy_ratio",
    "latency_ratio": "compress/latency_ratio", "throughput_ratio": "compress/throughput_ratio",
    "size_ratio": "compress/size_ratio", "sparsity": "compress/sparsity",
    "energy_ratio_q1": "compress/energy_ratio_q1", "energy_ratio_q3": "compress/energy_ratio_q3",
    "energy_per_1k_j_spread": "test/energy_per_1k_j_spread", "energy_per_1k_j_se": "test/energy_per_1k_j_se",
    "test_samples": "test/samples",
    "units_removed_fraction": "compress/units_removed_fraction", "student_val_acc": "compress/student_val_acc",
}


def _log_work(run: Run, ctx: Context, plan: Plan, cost: EnergyReading, built: Built, variant_dir: Path) -> None:
    """What is known once the variant is made: settings, the compression's energy, its training
    curve, the model files."""
    run.log_params({"family": ctx.family, "source": ctx.source, "technique": plan.technique, "level": plan.level,
                    "settings": plan.settings, "model": built.spec.hparams, "evaluate": ctx.params.evaluate.model_dump()})
    run.log_metrics(cost.metrics("energy"))  # what the compression itself spent
    for row in built.history:
        run.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
    for f in sorted(variant_dir.iterdir()):
        run.log_artifact(f, "model")


def _log_figures(run: Run, model_id: str | None, metrics: dict, reference: dict) -> None:
    """The measured figures, once every model's energy has been measured (those of the Models
    view linked to the variant's logged model ``model_id``)."""
    figures = {_METRIC_NAMES[k]: v for k, v in metrics.items() if k in _METRIC_NAMES and isinstance(v, (int, float))}
    run.log_metrics(figures)
    run.log_model_figures(model_id, figures)
    run.log_metrics({"reference/test_acc": reference["test_acc"],
                     "reference/energy_per_1k_j": reference.get("energy_per_1k_j")})
    run.set_tags({"flops_note": metrics.get("flops_note"), "payback": metrics.get("payback"),
                  "inference_allocator": metrics.get("inference_allocator"),
                  "inference_device": metrics.get("inference_device")})


def compress_family(params: Params, family: str, source: str = paths.BASELINE, meter: EnergyMeter | None = None,
                    prepared: Prepared | None = None) -> dict:
    """The compress stage for one trained model (``source``: baseline or tuned) of ``family``."""
    t0 = time.perf_counter()
    quiet_torch_quantization()
    meter = (meter or EnergyMeter(params.energy)).prewarm()
    prepared = prepared or load_prepared(params.data.dataset)
    teacher, spec, source_run = load_trained(family, source)  # on the CPU: the variants are made from it
    # Measured where evaluate.device says; int8 variants run on the CPU wherever that is.
    device = resolve_eval_device(params.evaluate.device, trained_on(source_run))
    measured_teacher = teacher if device == "cpu" else copy.deepcopy(teacher).to(device)
    torch.manual_seed(params.base.seed)
    ctx = Context(params, family, source, teacher, spec, prepared)
    plans, skipped = plan_variants(ctx)  # bad params fail here, before any work or run

    out_root = paths.compressed_dir(family, source)
    interrupts.defer()  # writing from here: a signal is raised at the next check, what was written removed
    if out_root.exists():
        shutil.rmtree(out_root)
    out_root.mkdir(parents=True)
    source_run_id = source_run.get("run_id", "unknown")

    ref_quality = _quality(ctx, measured_teacher)
    done = []
    for plan in plans:
        tags = {**base_tags("compress", family, prepared.card), "variant": plan.name, "technique": plan.technique,
                "level": plan.level, "source_run_id": source_run_id, "source_variant": source,
                **meter.tags()}
        name = f"compress-{family}-{source}-{plan.name}"
        with tracked_run(params.tracking, name, tags) as run:
            torch.manual_seed(params.base.seed)
            with meter.measure() as m:
                built = plan.build()
            cost = m.total
            if plan.base is not None:  # what the model it quantizes cost to make
                cost = ctx.made[plan.base][1] + cost
            ctx.made[plan.name] = (built, cost)
            recipe = {"technique": plan.technique, "level": plan.level, **built.recipe,
                      "source": {"family": family, "variant": source, "run_id": source_run_id}}
            variant_dir = out_root / plan.name
            model_path = save_variant(variant_dir, built.model, built.spec, recipe)
            model, _, _ = load_variant(variant_dir)  # measure what was saved
            quantized = bool(built.recipe.get("quantization"))
            sizes = _size_figures(model, built.spec, model_path, quantized, built.counts_from)
            if not quantized:
                model = model.to(device)
            measured = _quality(ctx, model)
            _log_work(run, ctx, plan, cost, built, variant_dir)
            model_id = run.log_model(sorted(variant_dir.iterdir()), f"{family}-{source}-{plan.name}", family,
                                     {"family": family, "variant": plan.name, "technique": plan.technique,
                                      "source_variant": source}, built.spec.hparams)
        done.append((plan, run, model_id, model, measured, cost, sizes, built))
        print(f"[{family}/{source}] {plan.name}: test/acc {measured.acc:.4f}, "
              f"compression {cost.energy_j if cost.energy_j is not None else float('nan'):.2f} J", flush=True)

    rounds = _measure_energy(ctx, {REFERENCE: measured_teacher, **{d[0].name: d[3] for d in done}}, meter)
    threads, allocator = measured_threads(params.evaluate), allocator_setting()
    ref_m = InferenceMeasurement(*ref_quality, rounds[REFERENCE], threads, allocator, str(model_device(measured_teacher)))
    reference = _reference(ctx, ref_m)
    variants: dict[str, dict] = {}
    client, _ = client_for(params.tracking)
    for plan, run, model_id, model, measured, cost, sizes, built in done:
        result = InferenceMeasurement(*measured, rounds[plan.name], threads, allocator, str(model_device(model)))
        metrics = {"technique": plan.technique, "level": plan.level,
                   **_variant_metrics(result, reference, ref_m, cost, sizes, built)}
        _log_figures(run, model_id, metrics, reference)  # onto the variant's finished run
        variants[plan.name] = metrics
        ratio = metrics.get("energy_ratio")
        print(f"[{family}/{source}] {plan.name}: {metrics.get('energy_per_1k_j', float('nan')):.4f} J/1k predictions, "
              f"energy ratio {ratio if ratio is not None else float('nan'):.2f}", flush=True)

    if skipped:  # what the family does not declare, on the run of the model it would have compressed
        Run(client, source_run_id).set_tags_to(
            source_run_id, {"compress_skipped." + re.sub(r"[^\w.\-/ ]", "_", name): reason  # MLflow's key characters
                            for name, reason in skipped.items()},
            "the skipped variants and their reasons are in the compress metrics file and the report")
    out = {
        "family": family,
        "source": source,
        "source_run_id": source_run_id,
        "energy_method": meter.method,
        "reference": reference,
        "variants": variants,
        "skipped": skipped,
        "stage_duration_s": time.perf_counter() - t0,
    }
    paths.write_json(_clean(out), paths.compress_metrics(family, source))
    return out


def _clean(d):
    """JSON without None values (DVC and readers treat absent as unknown)."""
    if isinstance(d, dict):
        return {k: _clean(v) for k, v in d.items() if v is not None}
    return d
